"""transparent_bn: fold a BatchNormalization into the Conv / ConvTranspose / Gemm / MatMul behind a chain of
ops that only move data (Identity, Reshape, Transpose, Flatten, Squeeze, Unsqueeze).

Before:  x -> Conv(W, b) -> Reshape([1, C, 1, 1]) -> BatchNormalization -> y    (tf2onnx on a 1x1 map)
         x[N, K] -> MatMul(W[K, C]) -> Reshape([-1, C, 1, 1]) -> BatchNormalization -> y
         x -> MatMul -> Identity -> BatchNormalization -> y;   MatMul -> Reshape -> Transpose -> BN
After:   x -> Conv(W', b') -> Reshape -> y;   x -> MatMul(W') -> Reshape -> Add(t) -> y

Math: the ops in between only move elements, so BN's per-channel map y = s * z + t on axis 1 of their
output is the same map on the producer's channel axis, provided channel c there is channel c on axis 1
after the moves. That is proven op by op from static shapes (see ``_axes``): Identity keeps the axis,
Transpose moves it to perm.index(axis), a Reshape/Flatten/Squeeze/Unsqueeze keeps it at the axis b with
in[a] == out[b] and equal products of the sizes behind them. Then W', b' as in conv_bn (Conv-like) or
W' as in matmul_bn with the shift t added after the chain, shaped [C, 1, ...] for axis 1 (MatMul).
The tensors between producer and y change value, so they get fresh names.

Refuses: AXIS_UNPROVEN (an op in the way whose mapping can't be proven: unknown shapes, symbolic sizes
behind the channel axis, the channel landing off axis 1; the detail names the op), MATMUL_LAYOUT, and the
common refusals (a link read elsewhere or a graph output, constants, training mode, dtype, overflow).
"""

from __future__ import annotations

import onnx

from bnfold.fold import fold_math
from bnfold.fold.graph import is_float_dtype
from bnfold.fold.rules._axes import (
    axis_view,
    links_refusal,
    matmul_layout,
    moved_axis,
    renamed,
    set_beta_one,
    transparent_chain,
)
from bnfold.fold.rules._common import bn_affine, for_chain, plan_producer_fold, rounded, sole_producer, write_constants
from bnfold.fold.rules.base import Plan, Refusal
from bnfold.reasons import Reason

PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def channel_after(g, chain: list[onnx.NodeProto], axis: int) -> tuple[int, int] | Refusal:
    """(axis, rank) of the producer's channel axis after every node of *chain*."""
    rank = 0
    for node in chain:
        moved = moved_axis(g, node, axis)
        if isinstance(moved, Refusal):
            return moved
        axis, rank = moved
    return axis, rank


class TransparentBnRule:
    name = "transparent_bn"
    anchor_ops = frozenset({"BatchNormalization"})

    def match(self, g, bn: onnx.NodeProto) -> Plan | Refusal | None:
        chain = transparent_chain(g, bn.input[0])
        if not chain:
            return None
        producer = sole_producer(g, chain[0].input[0], chain[0], PRODUCERS)
        if producer is None or isinstance(producer, Refusal):
            return producer
        blocked = links_refusal(g, chain, bn)
        if blocked is not None:
            return blocked
        layout = matmul_layout(g, producer) if producer.op_type == "MatMul" else (1, 0, 1)
        if isinstance(layout, Refusal):
            return layout
        slot, free_axis, start = layout
        landed = channel_after(g, chain, start)
        if isinstance(landed, Refusal):
            return landed
        axis, rank = landed
        if axis != 1:
            return Refusal(Reason.AXIS_UNPROVEN, f"{chain[-1].op_type} {chain[-1].name!r}: the channel lands on "
                                                 f"axis {axis}, not the normalized axis 1")
        affine = bn_affine(g, bn)
        if isinstance(affine, Refusal):
            return affine
        if producer.op_type == "MatMul":
            return _matmul_plan(g, producer, bn, affine, slot, free_axis, rank)
        plan = plan_producer_fold(g, producer, bn, affine)
        if isinstance(plan, Refusal):
            return plan
        return Plan(anchor=bn, target=producer, constants=plan.constants, precise=plan.precise,
                    surviving_output=bn.output[0], removed_tensors=_removed(producer, chain))

    def rewrite(self, g, plan: Plan) -> None:
        producer, bn = plan.target, plan.anchor
        chain = transparent_chain(g, bn.input[0])
        write_constants(g, producer, plan)
        if producer.op_type == "Gemm":
            set_beta_one(producer)
        with g.editing(*chain):
            last = _rename_chain(g, producer, chain)
            if producer.op_type == "MatMul":  # the BN becomes the Add of the shift, in place
                bias = g.add_initializer(plan.constants[-1][0], f"{bn.name or bn.output[0]}_bias")
                bn.CopyFrom(onnx.helper.make_node("Add", [last, bias], [bn.output[0]], name=bn.name))
            else:
                chain[-1].output[0] = bn.output[0]
                g.remove_node(bn)


def _matmul_plan(g, matmul, bn, affine, slot: int, free_axis: int, rank: int) -> Plan | Refusal:
    scale, shift = affine
    weight = g.constant(matmul.input[slot]).value
    if not is_float_dtype(weight.dtype):
        return Refusal(Reason.UNSUPPORTED_DTYPE, f"weight is {weight.dtype}")
    if scale.shape != (weight.shape[free_axis],):
        return Refusal(Reason.SHAPE_MISMATCH, f"{scale.shape[0]} channels vs weight axis {weight.shape[free_axis]}")
    w64, b64 = fold_math.fold_into_matmul(g.exact(matmul.input[slot], weight), scale, shift, channel_axis=free_axis)
    new_w = rounded(w64, weight.dtype, "weight", reference=weight, scale=scale, channel_axis=free_axis)
    bias = rounded(axis_view(b64, rank, 1), weight.dtype, "bias")
    for value in (new_w, bias):
        if isinstance(value, Refusal):
            return value
    return Plan(anchor=bn, target=matmul, constants={slot: (new_w, "weight"), -1: (bias, "bias")},
                precise=for_chain(g, bn.output[0], {slot: w64}), surviving_output=bn.output[0],
                removed_tensors=_removed(matmul, transparent_chain(g, bn.input[0])))


def _removed(producer: onnx.NodeProto, chain: list[onnx.NodeProto]) -> dict[str, None]:
    """The producer's and the chain's outputs: renamed, since their values change."""
    return {name: None for name in (producer.output[0], *(n.output[0] for n in chain))}


def _rename_chain(g, producer: onnx.NodeProto, chain: list[onnx.NodeProto]) -> str:
    """Give the producer's and every chain node's output a fresh name; return the last one."""
    name = renamed(g, producer.output[0])
    producer.output[0] = name
    for node in chain:
        node.input[0] = name
        name = renamed(g, node.output[0])
        node.output[0] = name
    return name


RULE = TransparentBnRule()
