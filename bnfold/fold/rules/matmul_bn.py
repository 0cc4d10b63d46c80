"""matmul_bn: fold a BatchNormalization into a MatMul whose constant operand carries the channel axis.

Before:  x[N, K] -> MatMul(x, W[K, C]) -> BatchNormalization -> y[N, C]
         x[N, K, L] -> MatMul(W[C, K], x) -> BatchNormalization -> y[N, C, L]
After:   the same MatMul with W scaled along C, then Add(bias) named like the BN:
         W'[:, c] = W[:, c] * s[c]  (or W'[c, :] = W[c, :] * s[c]),   bias = t  ([C] or [C, 1])

BN normalizes axis 1 of its input. The MatMul output rank r is rank(x) (1 when x is 1-D, whose only axis
is contracted away); W's free axis lands on axis r-1 (W second) or r-2 (W first). Only when that axis is 1
is the fold exact.

Refuses: MATMUL_LAYOUT (W's free axis is not the channel axis, W not 2-D, neither operand constant),
OVERRIDABLE_INITIALIZER (W is an initializer also listed as a graph input, IR >= 4), RANK_UNKNOWN (x's
rank can't be proven), and the common refusals of conv_bn.
"""

from __future__ import annotations

import numpy as np
import onnx

from bnfold.fold import fold_math
from bnfold.fold.rules._common import bn_affine, for_chain, rounded, sole_producer, write_constants
from bnfold.fold.rules.base import Plan, Refusal
from bnfold.reasons import Reason


class MatMulBnRule:
    name = "matmul_bn"
    anchor_ops = frozenset({"BatchNormalization"})

    def match(self, g, bn: onnx.NodeProto) -> Plan | Refusal | None:
        matmul = sole_producer(g, bn.input[0], bn, frozenset({"MatMul"}))
        if matmul is None or isinstance(matmul, Refusal):
            return matmul
        layout = self._layout(g, matmul)
        if isinstance(layout, Refusal):
            return layout
        slot, weight, axis = layout
        affine = bn_affine(g, bn)
        if isinstance(affine, Refusal):
            return affine
        scale, shift = affine
        if scale.shape != (weight.shape[axis],):
            return Refusal(Reason.SHAPE_MISMATCH, f"{scale.shape[0]} channels vs weight axis {weight.shape[axis]}")
        exact = g.exact(matmul.input[slot], weight)
        w64, bias64 = fold_math.fold_into_matmul(exact, scale, shift, channel_axis=axis)
        new_w = rounded(w64, weight.dtype, "weight", reference=weight, scale=scale, channel_axis=axis)
        bias = rounded(bias64 if slot == 1 else bias64.reshape(-1, 1), weight.dtype, "bias")
        if isinstance(new_w, Refusal):
            return new_w
        if isinstance(bias, Refusal):
            return bias
        return Plan(anchor=bn, target=matmul, constants={slot: (new_w, "weight"), -1: (bias, "bias")},
                    precise=for_chain(g, bn.output[0], {slot: w64}),
                    surviving_output=bn.output[0], removed_tensors={})

    @staticmethod
    def _layout(g, matmul: onnx.NodeProto) -> tuple[int, np.ndarray, int] | Refusal:
        """(slot of the constant operand, its value, its channel axis) when the fold is exact."""
        for slot, other in ((1, 0), (0, 1)):
            found = g.constant(matmul.input[slot])
            if not found.ok or g.constant(matmul.input[other]).ok:
                continue
            weight = found.value
            if weight.ndim != 2 or not np.issubdtype(weight.dtype, np.floating):
                return Refusal(Reason.MATMUL_LAYOUT, f"constant operand has shape {weight.shape}")
            rank = g.rank(matmul.input[other])
            if rank is None:
                return Refusal(Reason.RANK_UNKNOWN, matmul.input[other])
            out_rank = rank if rank >= 2 else 1  # a 1-D x loses its only axis; W's free axis becomes axis 0
            if (slot == 1 and out_rank == 2) or (slot == 0 and out_rank == 3):
                return slot, weight, 1 if slot == 1 else 0
            return Refusal(Reason.MATMUL_LAYOUT, f"output rank {out_rank} puts the weight's free axis off axis 1")
        overridable = [name for name in matmul.input[:2] if g.constant(name).reason is Reason.OVERRIDABLE_INITIALIZER]
        if overridable:  # the weight is there, but a caller may replace it: that, not the layout, is the obstacle
            return Refusal(Reason.OVERRIDABLE_INITIALIZER, ", ".join(overridable))
        return Refusal(Reason.MATMUL_LAYOUT, "no single constant operand")

    def rewrite(self, g, plan: Plan) -> None:
        matmul, bn = plan.target, plan.anchor
        write_constants(g, matmul, plan)
        bias_name = g.add_initializer(plan.constants[-1][0], f"{bn.name or bn.output[0]}_bias")
        # the BN node becomes the Add in place: same position, name and output
        bn.CopyFrom(onnx.helper.make_node("Add", [bn.input[0], bias_name], [bn.output[0]], name=bn.name))


RULE = MatMulBnRule()
