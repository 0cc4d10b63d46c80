"""Affine sites no rule recognised: a Mul / Add / Sub / Div by a per-channel constant (one axis of more
than one value, the shape of a decomposed BN) is reported as left in place, as a BatchNormalization is,
rather than passed over in silence. MatMul -> Add(bias) (transparent ops between included) is the folded
form, not a site."""

from __future__ import annotations

import onnx

from bnfold.fold.graph import GraphIndex, is_float_dtype
from bnfold.fold.rules._axes import transparent_chain
from bnfold.fold.rules._branches import AFFINE_OPS, data_operand
from bnfold.fold.rules.base import Refusal
from bnfold.reasons import Reason


def leftover_affine(g: GraphIndex, node: onnx.NodeProto) -> Refusal | None:
    """NO_FOLDABLE_NEIGHBOUR for an unrecognised per-channel affine node; None for any other node."""
    operands = data_operand(g, node) if node.op_type in AFFINE_OPS else None
    if operands is None:
        return None
    data, slot = operands
    const = g.constant(node.input[slot]).value
    assert const is not None  # data_operand gave *slot* as the one constant operand
    if not is_float_dtype(const.dtype) or sum(size > 1 for size in const.shape) != 1:
        return None
    producer = g.producer.get(data)
    chain = transparent_chain(g, data)
    origin = g.producer.get(chain[0].input[0]) if chain else producer
    if node.op_type == "Add" and origin is not None and origin.op_type in ("MatMul", "Gemm"):
        return None  # a bias (transparent_bn writes MatMul -> Reshape -> Add(bias))
    readers = ", ".join(sorted({n.op_type for n in g.readers(node.output[0])})) or "none"
    return Refusal(Reason.NO_FOLDABLE_NEIGHBOUR,
                   f"producer {producer.op_type if producer else 'graph input'}, readers {readers}")
