"""bn_gemm: fold a BatchNormalization (BatchNorm1d before Linear) or a per-channel Mul / Add / Sub / Div on
[N, K] into the Gemm or MatMul that reads it.

Before:  x[N, K] -> BatchNormalization -> z -> Gemm(B, C, alpha, beta, transA=0, transB) -> y
         x[N, K] -> BatchNormalization -> z -> MatMul(z, W[K, M]) -> y
After:   x -> Gemm(B', C', alpha, beta=1, transB) -> y;   x -> Gemm(x, W', bias) -> y  (the MatMul becomes
         the Gemm it is: same name, same output); on x[..., K] of rank > 2 a pure scale (Mul, z / c)
         along the last axis folds into W, the MatMul staying a MatMul

Math, with z = s * x + t per column k (BN, or the affine node as in affine_conv) and B^ = B (or B^T):
    alpha * (x s + t) B^ + beta * C = alpha * x (s B^) + (beta * C + alpha * t B^)
so row k of B^ is scaled by s[k] and C' = beta * C + alpha * t B^ (C absent: 0). A MatMul on a rank-2 x
is the Gemm with alpha = 1 and no C. Exact only where the contracted axis is z's axis 1: transA = 0,
and for a MatMul z's last axis (a BN's axis 1 only on rank 2). z as the MatMul's second operand is no site.

Refuses: CONSUMER_LAYOUT (transA = 1, a BN before a MatMul of rank > 2, a shift there, a 1-D z, a weight
that isn't 2-D),
BN_HAS_OTHER_CONSUMERS / BN_OUTPUT_IS_GRAPH_OUTPUT, SHAPE_MISMATCH / RANK_UNKNOWN (x's shape, parameter
sizes), and the common refusals (constants, training mode, dtype, overflow).
"""

from __future__ import annotations

import numpy as np
import onnx

from bnfold.fold import fold_math
from bnfold.fold.constant_eval import attribute_values
from bnfold.fold.graph import input_name
from bnfold.fold.rules._axes import same_shape_refusal, set_beta_one, unchanged_name
from bnfold.fold.rules._branches import anchor_affine, data_operand
from bnfold.fold.rules._common import CHAIN_OPS, rounded, weights, write_constants
from bnfold.fold.rules.affine_conv import sole_reader
from bnfold.fold.rules.base import Plan, Refusal
from bnfold.reasons import Reason


def _layout(g, layer: onnx.NodeProto, z: str) -> tuple[bool, float, float, int] | Refusal:
    """(transB, alpha, beta, rank of z) of the reading layer, a MatMul as a Gemm; or why z's last axis
    isn't the contracted one."""
    if layer.op_type == "Gemm":
        attrs = attribute_values(layer)
        if attrs.get("transA", 0):
            return Refusal(Reason.CONSUMER_LAYOUT, f"{layer.name or layer.output[0]} has transA=1")
        return bool(attrs.get("transB", 0)), attrs.get("alpha", 1.0), attrs.get("beta", 1.0), 2
    rank = g.rank(z)
    if rank is None:
        return Refusal(Reason.RANK_UNKNOWN, z)
    if rank < 2:
        return Refusal(Reason.CONSUMER_LAYOUT, f"MatMul input {z} of rank {rank}")
    return False, 1.0, 1.0, rank


class BnGemmRule:
    name = "bn_gemm"
    anchor_ops = frozenset({"BatchNormalization", "Mul", "Add", "Sub", "Div"})

    def match(self, g, node: onnx.NodeProto) -> Plan | Refusal | None:
        operands = data_operand(g, node)
        if operands is None:
            return None
        data, const_slot = operands
        layer = sole_reader(g, node, frozenset({"Gemm", "MatMul"}))
        if layer is None or isinstance(layer, Refusal):
            return layer
        layout = _layout(g, layer, node.output[0])
        if isinstance(layout, Refusal):
            return layout
        trans_b, alpha, beta, rank = layout
        if node.op_type == "BatchNormalization" and rank != 2:
            return Refusal(Reason.CONSUMER_LAYOUT, f"BN normalizes axis 1, the MatMul contracts axis {rank - 1}")
        found = weights(g, layer, (1, 2) if layer.op_type == "Gemm" else (1,))
        if isinstance(found, Refusal):
            return found
        weight, bias = (found + [None])[:2]
        assert weight is not None  # B (input 1) is a required input
        if weight.ndim != 2:
            return Refusal(Reason.CONSUMER_LAYOUT, f"weight of shape {weight.shape}")
        channels = weight.shape[1] if trans_b else weight.shape[0]
        affine = anchor_affine(g, node, const_slot, rank, channels, axis=rank - 1)
        if isinstance(affine, Refusal):
            return affine
        widened = same_shape_refusal(g, data, rank, channels, axis=rank - 1) if const_slot is not None else None
        if widened is not None:
            return widened
        if rank > 2 and np.any(affine[1] != 0):
            return Refusal(Reason.CONSUMER_LAYOUT, f"a shift before a rank-{rank} MatMul: no bias slot")
        w64, c64 = fold_math.fold_into_following_gemm(g.exact(layer.input[1], weight),
                                                      g.exact(input_name(layer, 2), bias), *affine,
                                                      trans_b=trans_b, alpha=alpha, beta=beta)
        new_w, new_c = rounded(w64, weight.dtype, "weight"), rounded(c64, weight.dtype, "bias")
        if isinstance(new_w, Refusal):
            return new_w
        if isinstance(new_c, Refusal):
            return new_c
        upstream = g.producer.get(data)
        chained = upstream is not None and upstream.op_type in CHAIN_OPS
        constants = {1: (new_w, "weight")} if rank > 2 else {1: (new_w, "weight"), 2: (new_c, "bias")}
        return Plan(anchor=node, target=layer, constants=constants,
                    precise={1: w64, 2: c64} if chained else {}, surviving_output=unchanged_name(g, layer.output[0]),
                    removed_tensors={node.output[0]: None})

    def rewrite(self, g, plan: Plan) -> None:
        layer, node = plan.target, plan.anchor
        if layer.op_type == "MatMul" and 2 in plan.constants:
            layer.op_type = "Gemm"  # on rank 2, exactly the MatMul plus its new bias
        write_constants(g, layer, plan)
        if layer.op_type == "Gemm":
            set_beta_one(layer)
        operands = data_operand(g, node)
        assert operands is not None  # match found the data operand of this very node
        layer.input[0] = operands[0]
        g.remove_node(node)


RULE = BnGemmRule()
