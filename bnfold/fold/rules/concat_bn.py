"""concat_bn: fold a BatchNormalization (or per-channel Mul / Add / Sub / Div) after a channel Concat into
every Conv / ConvTranspose / Gemm that feeds the Concat (YOLO-style CSP blocks: Concat -> BN).

Before:  x1 -> Conv1(W1, b1) -\\
                               Concat(axis=1) -> BatchNormalization -> y
         x2 -> Conv2(W2, b2) -/
After:   x1 -> Conv1(W1', b1') -\\
                                 Concat(axis=1) -> y
         x2 -> Conv2(W2', b2') -/

Math: Concat along axis 1 lays the producers' channels side by side, so the per-channel map y = s * z + t
splits into segments: producer k with C_k channels starting at offset o_k gets s[o_k : o_k + C_k] and
t[o_k : o_k + C_k], folded as in conv_bn (ConvTranspose, Gemm likewise). The segments must add up to C.

Refuses: CONCAT_AXIS (the Concat joins another axis), BRANCH_NOT_FOLDABLE (an input not produced by a
foldable node), PRODUCER_HAS_OTHER_CONSUMERS / PRODUCER_OUTPUT_IS_GRAPH_OUTPUT (a producer's or the Concat's
output read elsewhere or a graph output, or one input used twice), SHAPE_MISMATCH (segments vs parameters,
branches of different ranks), and the common refusals (constants, training mode, dtype, overflow).
"""

from __future__ import annotations

import numpy as np
import onnx

from bnfold.fold.constant_eval import attribute_values
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


class ConcatBnRule:
    name = "concat_bn"
    anchor_ops = frozenset({"BatchNormalization", "Mul", "Add", "Sub", "Div"})

    def match(self, g, anchor: onnx.NodeProto) -> Plan | Refusal | None:
        found = join_input(g, anchor, "Concat")
        if found is None:
            return None
        concat, const_slot = found
        producers = branch_producers(g, concat, anchor)
        if producers is None or isinstance(producers, Refusal):
            return producers
        rank = producers[0][1]
        axis = attribute_values(concat).get("axis", 1)
        if axis % rank != 1:
            return Refusal(Reason.CONCAT_AXIS, f"Concat axis {axis} on rank-{rank} tensors")
        sizes = [channels_of(g, producer) for producer, _ in producers]
        affine = anchor_affine(g, anchor, const_slot, rank, sum(sizes))
        if isinstance(affine, Refusal):
            return affine
        offsets = np.cumsum([0, *sizes])
        parts = []
        for (producer, _), start, stop in zip(producers, offsets[:-1], offsets[1:], strict=True):
            part = plan_producer_fold(g, producer, anchor, (affine[0][start:stop], affine[1][start:stop]))
            if isinstance(part, Refusal):
                return part
            parts.append((producer, part))
        return branch_plan(anchor, concat, parts)

    def rewrite(self, g, plan: Plan) -> None:
        assert isinstance(plan, BranchPlan)  # match only ever plans a BranchPlan (branch_plan)
        rewrite_branches(g, plan)


RULE = ConcatBnRule()
