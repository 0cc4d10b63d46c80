"""affine_chain: fold a Mul / Add / Sub / Div by a per-channel constant into the Conv, ConvTranspose
or Gemm producing the other operand (the scale/shift blocks Paddle and TF exporters emit instead of BN).

Before:  x -> Conv(W, b) -> Mul(c1) -> Add(c2) -> y
After:   x -> Conv(W', b') -> y       (one fold per elementwise node; the driver chains them)

Math: the elementwise node is z -> a * z + d per channel with (a, d) = (c, 0) for Mul, (1, c) for
Add, (1, -c) for z - c, (-1, c) for c - z, (1/c, 0) for z / c; then W', b' as in conv_bn.
The constant must broadcast along the channel axis only: right-aligned to the producer's output rank
r (Conv/ConvTranspose: weight rank; Gemm: 2), every axis but 1 must be 1 — [C,1,1], [1,C,1,1], [1], scalar.
A [C] constant on a 4-D tensor broadcasts along the last axis, not the channels: refused.

Refuses: NOT_PER_CHANNEL, SHAPE_MISMATCH (axis-1 size neither 1 nor C), c / z (not affine),
OVERRIDABLE_INITIALIZER (the constant, or the producer's weight, is also a graph input), and the common
refusals (other readers, graph output, non-constant weights, overflow, dtype).
"""

from __future__ import annotations

import numpy as np
import onnx

from bnfold.fold import fold_math
from bnfold.fold.constant_eval import DEFAULT_DOMAINS
from bnfold.fold.graph import is_float_dtype
from bnfold.fold.rules._common import output_channels, plan_producer_fold, rewrite_producer_fold, sole_producer
from bnfold.fold.rules.base import Plan, Refusal
from bnfold.reasons import Reason

PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm"})


def per_channel(const: np.ndarray, rank: int, channels: int) -> np.ndarray | Refusal:
    """The constant as a [channels] vector, if it broadcasts along axis 1 of a rank-*rank* tensor only."""
    if const.ndim > rank:
        return Refusal(Reason.NOT_PER_CHANNEL, f"constant of rank {const.ndim} on a rank-{rank} tensor")
    aligned = (1,) * (rank - const.ndim) + const.shape
    if any(size != 1 for axis, size in enumerate(aligned) if axis != 1):
        return Refusal(Reason.NOT_PER_CHANNEL, f"constant shape {const.shape} on a rank-{rank} tensor")
    if aligned[1] not in (1, channels):
        return Refusal(Reason.SHAPE_MISMATCH, f"constant shape {const.shape} for {channels} channels")
    return np.broadcast_to(const.reshape(-1).astype(np.float64), (channels,))


def _overridable_site(g, node: onnx.NodeProto, consts) -> Refusal | None:
    """A Mul/Add/... of a producer's output by an initializer a caller may override (IR >= 4, listed as a
    graph input): a site refused for that reason; any other pair of non-constants is no site at all."""
    for slot in (0, 1):
        if consts[slot].reason is Reason.OVERRIDABLE_INITIALIZER and not consts[1 - slot].ok:
            producer = g.producer.get(node.input[1 - slot])
            if producer is not None and producer.op_type in PRODUCERS and producer.domain in DEFAULT_DOMAINS:
                return Refusal(Reason.OVERRIDABLE_INITIALIZER, node.input[slot])
    return None


class AffineChainRule:
    name = "affine_chain"
    anchor_ops = frozenset({"Mul", "Add", "Sub", "Div"})

    def match(self, g, node: onnx.NodeProto) -> Plan | Refusal | None:
        if len(node.input) != 2 or node.domain not in DEFAULT_DOMAINS:
            return None
        consts = [g.constant(name) for name in node.input]
        if consts[0].ok == consts[1].ok:
            return _overridable_site(g, node, consts)
        const_slot = 0 if consts[0].ok else 1
        const = consts[const_slot].value
        producer = sole_producer(g, node.input[1 - const_slot], node, PRODUCERS)
        if producer is None or isinstance(producer, Refusal):
            return producer
        if not is_float_dtype(const.dtype):
            return Refusal(Reason.UNSUPPORTED_DTYPE, f"constant is {const.dtype}")
        if node.op_type == "Div" and const_slot == 0:
            return Refusal(Reason.NOT_PER_CHANNEL, "constant divided by the tensor is not affine")
        weight = g.constant(producer.input[1])
        if not weight.ok:
            return Refusal(weight.reason or Reason.WEIGHT_NOT_CONSTANT, producer.input[1])
        rank = 2 if producer.op_type == "Gemm" else weight.value.ndim
        vector = per_channel(const, rank, output_channels(producer, weight.value))
        if isinstance(vector, Refusal):
            return vector
        with np.errstate(divide="ignore"):  # x / 0 gives inf here; rounding refuses it as FOLD_OVERFLOW
            affine = fold_math.affine_of_op(node.op_type, vector, const_first=const_slot == 0)
        return plan_producer_fold(g, producer, node, affine)

    def rewrite(self, g, plan: Plan) -> None:
        rewrite_producer_fold(g, plan)


RULE = AffineChainRule()
