"""transparent_bn: fold a BatchNormalization (or a per-channel Mul / Add / Sub / Div) into the Conv /
ConvTranspose / Gemm / MatMul behind a chain of ops that only move data (Identity, Reshape, Transpose,
Flatten, Squeeze, Unsqueeze).

Before:  x -> Conv(W, b) -> Reshape([1, C, 1, 1]) -> BatchNormalization -> y    (tf2onnx on a 1x1 map)
         x[N, K] -> MatMul(W[K, C]) -> Reshape([-1, C, 1, 1]) -> BatchNormalization -> y
         x -> MatMul -> Identity -> BN -> y;   MatMul -> Reshape -> Transpose -> BN;   Conv -> Reshape -> Mul
After:   x -> Conv(W', b') -> Reshape -> y;   x -> MatMul(W') -> Reshape -> Add(t) -> y

Math: the ops in between only move elements, so a per-channel map y = s * z + t on the channel axis of
their output is the same map on the producer's channel axis, provided channel c there is channel c after
the moves. That is proven op by op from static shapes (see ``_axes``): Identity keeps the axis,
Transpose moves it to perm.index(axis), a Reshape/Flatten/Squeeze/Unsqueeze keeps it at the axis b with
in[a] == out[b] and equal products of the sizes behind them. A BN needs the channel on axis 1; an affine
node's constant must broadcast along the axis the channel lands on. Then W', b' as in conv_bn
(Conv-like), or W' as in matmul_bn with the shift t added after the chain, shaped [C, 1, ...] for that
axis (MatMul; no Add for a pure scale, and an Add alone is already the folded form). The tensors between
producer and y change value, so they get fresh names.

Refuses: AXIS_UNPROVEN (an op in the way whose mapping can't be proven: unknown shapes, symbolic sizes
behind the channel axis, the channel landing off BN's axis 1; the detail names the op), NOT_PER_CHANNEL,
MATMUL_LAYOUT, and the common refusals (a link read elsewhere or a graph output, constants, training mode,
dtype, overflow).
"""

from __future__ import annotations

import numpy as np
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
from bnfold.fold.rules._branches import anchor_affine, data_operand
from bnfold.fold.rules._common import (
    for_chain,
    output_channels,
    plan_producer_fold,
    rounded,
    sole_producer,
    weights,
    write_constants,
)
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
    anchor_ops = frozenset({"BatchNormalization", "Mul", "Add", "Sub", "Div"})

    def match(self, g, anchor: onnx.NodeProto) -> Plan | Refusal | None:
        operands = data_operand(g, anchor)
        chain = transparent_chain(g, operands[0]) if operands else []
        if operands is None or not chain:
            return None
        producer = sole_producer(g, chain[0].input[0], chain[0], PRODUCERS)
        if producer is None or isinstance(producer, Refusal):
            return producer
        blocked = links_refusal(g, chain, anchor)
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
        if anchor.op_type == "BatchNormalization" and axis != 1:
            return Refusal(Reason.AXIS_UNPROVEN, f"{chain[-1].op_type} {chain[-1].name!r}: the channel lands on "
                                                 f"axis {axis}, not the normalized axis 1")
        weight = weights(g, producer, (slot,))
        if isinstance(weight, Refusal):
            return weight
        assert weight[0] is not None  # the MatMul's constant operand / W (input 1): never an absent input
        channels = weight[0].shape[free_axis] if producer.op_type == "MatMul" else output_channels(producer, weight[0])
        affine = anchor_affine(g, anchor, operands[1], rank, channels, axis=axis)
        if isinstance(affine, Refusal):
            return affine
        if producer.op_type == "MatMul":
            if np.all(affine[0] == 1.0):
                return None  # MatMul -> ... -> Add(c): already the folded form
            return _matmul_plan(g, producer, anchor, affine, slot, free_axis, (rank, axis), chain)
        plan = plan_producer_fold(g, producer, anchor, affine)
        if isinstance(plan, Refusal):
            return plan
        return Plan(anchor=anchor, target=producer, constants=plan.constants, precise=plan.precise,
                    surviving_output=anchor.output[0], removed_tensors=_removed(producer, chain))

    def rewrite(self, g, plan: Plan) -> None:
        producer, anchor = plan.target, plan.anchor
        operands = data_operand(g, anchor)
        assert operands is not None  # match found the data operand of this very node
        chain = transparent_chain(g, operands[0])
        write_constants(g, producer, plan)
        if producer.op_type == "Gemm":
            set_beta_one(producer)
        with g.editing(*chain):
            last = _rename_chain(g, producer, chain)
            if -1 in plan.constants:  # MatMul: the anchor becomes the Add of the shift, in place
                bias = g.add_initializer(plan.constants[-1][0], f"{anchor.name or anchor.output[0]}_bias")
                anchor.CopyFrom(onnx.helper.make_node("Add", [last, bias], [anchor.output[0]], name=anchor.name))
            else:
                chain[-1].output[0] = anchor.output[0]
                g.remove_node(anchor)


def _matmul_plan(g, matmul, anchor, affine, slot: int, free_axis: int, where: tuple[int, int],
                 chain: list[onnx.NodeProto]) -> Plan | Refusal:
    """W scaled along its free axis; the shift, shaped for axis where[1] of the rank-where[0] tensor after
    the chain, becomes an Add there (none for a pure scale)."""
    scale, shift = affine
    weight = g.constant(matmul.input[slot]).value
    assert weight is not None  # matmul_layout chose *slot* as the constant operand
    if not is_float_dtype(weight.dtype):
        return Refusal(Reason.UNSUPPORTED_DTYPE, f"weight is {weight.dtype}")
    if scale.shape != (weight.shape[free_axis],):
        return Refusal(Reason.SHAPE_MISMATCH, f"{scale.shape[0]} channels vs weight axis {weight.shape[free_axis]}")
    w64, b64 = fold_math.fold_into_matmul(g.exact(matmul.input[slot], weight), scale, shift, channel_axis=free_axis)
    new_w = rounded(w64, weight.dtype, "weight", reference=weight, scale=scale, channel_axis=free_axis)
    bias = rounded(axis_view(b64, *where), weight.dtype, "bias")
    if isinstance(new_w, Refusal):
        return new_w
    if isinstance(bias, Refusal):
        return bias
    constants = {slot: (new_w, "weight")}
    if np.any(b64 != 0):
        constants[-1] = (bias, "bias")
    return Plan(anchor=anchor, target=matmul, constants=constants,
                precise=for_chain(g, anchor.output[0], {slot: w64}), surviving_output=anchor.output[0],
                removed_tensors=_removed(matmul, chain))


def _removed(producer: onnx.NodeProto, chain: list[onnx.NodeProto]) -> dict[str, str | None]:
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
