"""add_bn: fold a BatchNormalization (or per-channel Mul / Add / Sub / Div) after an Add of two Conv /
ConvTranspose / Gemm outputs into both (pre-activation blocks: BN after a residual Add).

Before:  Conv1(W1, b1) -> a,  Conv2(W2, b2) -> c,  Add(a, c) -> BatchNormalization -> y
After:   Conv1(W1', b1') -> a', Conv2(W2', b2') -> c', Add(a', c') -> y

Math: s * (a + c) + t = (s * a + t) + (s * c): Conv1 absorbs (s, t), Conv2 absorbs (s, 0), each as in
conv_bn. Both branches must have all C channels and the same rank, so that axis 1 is the channel axis of
each (their spatial sizes may still broadcast: the map is per channel either way).

Refuses: BRANCH_NOT_FOLDABLE (an operand not produced by a foldable node), PRODUCER_HAS_OTHER_CONSUMERS /
PRODUCER_OUTPUT_IS_GRAPH_OUTPUT (a branch or the sum read elsewhere, or Add(a, a)), SHAPE_MISMATCH (a
branch with another channel count or rank), and the common refusals (constants, training, dtype, overflow).
"""

from __future__ import annotations

import numpy as np
import onnx

from bnfold.fold.rules._branches import (
    BranchPlan,
    anchor_affine,
    branch_plan,
    branch_producers,
    channels_of,
    join_input,
    rewrite_branches,
)
from bnfold.fold.rules._common import plan_producer_fold
from bnfold.fold.rules.base import Plan, Refusal
from bnfold.reasons import Reason


class AddBnRule:
    name = "add_bn"
    anchor_ops = frozenset({"BatchNormalization", "Mul", "Add", "Sub", "Div"})

    def match(self, g, anchor: onnx.NodeProto) -> Plan | Refusal | None:
        found = join_input(g, anchor, "Add")
        if found is None:
            return None
        add, const_slot = found
        if len(add.input) != 2 or any(g.constant(name).ok for name in add.input):
            return None  # a bias Add: affine_chain's and matmul_affine's business
        producers = branch_producers(g, add, anchor)
        if producers is None or isinstance(producers, Refusal):
            return producers
        sizes = {channels_of(g, producer) for producer, _ in producers}
        if len(sizes) != 1:
            return Refusal(Reason.SHAPE_MISMATCH, f"branches with {sorted(sizes)} channels")
        affine = anchor_affine(g, anchor, const_slot, producers[0][1], sizes.pop())
        if isinstance(affine, Refusal):
            return affine
        scale, shift = affine
        parts = []
        for (producer, _), part_shift in zip(producers, (shift, np.zeros_like(shift)), strict=True):
            part = plan_producer_fold(g, producer, anchor, (scale, part_shift))
            if isinstance(part, Refusal):
                return part
            parts.append((producer, part))
        return branch_plan(anchor, add, parts)

    def rewrite(self, g, plan: Plan) -> None:
        assert isinstance(plan, BranchPlan)  # match only ever plans a BranchPlan (branch_plan)
        rewrite_branches(g, plan)


RULE = AddBnRule()
