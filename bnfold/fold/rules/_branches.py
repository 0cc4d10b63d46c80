"""Shared by concat_bn and add_bn: a BN or per-channel affine node after a join (Concat / Add) of several
producers, folded into every producer at once. The plan carries one producer plan per branch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from bnfold.fold import fold_math
from bnfold.fold.constant_eval import DEFAULT_DOMAINS
from bnfold.fold.graph import is_float_dtype
from bnfold.fold.rules._axes import per_axis, renamed, set_beta_one
from bnfold.fold.rules._common import Affine, bn_affine, output_channels, sole_producer, weights, write_constants
from bnfold.fold.rules.base import Plan, Refusal
from bnfold.reasons import Reason

PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm"})
AFFINE_OPS = frozenset({"Mul", "Add", "Sub", "Div"})


@dataclass
class BranchPlan(Plan):
    parts: tuple[tuple[onnx.NodeProto, Plan], ...] = field(default_factory=tuple)  # (producer, its fold)


def data_operand(g, anchor: onnx.NodeProto) -> tuple[str, int | None] | None:
    """(the data input, the constant operand's slot) of a BN (slot None) or of a Mul/Add/Sub/Div with
    exactly one constant operand; None for anything else."""
    if anchor.domain not in DEFAULT_DOMAINS:
        return None
    if anchor.op_type == "BatchNormalization":
        return anchor.input[0], None
    if anchor.op_type in AFFINE_OPS and len(anchor.input) == 2:
        found = [g.constant(name).ok for name in anchor.input]
        if found.count(True) == 1:
            return anchor.input[1 - found.index(True)], found.index(True)
    return None


def join_input(g, anchor: onnx.NodeProto, join_op: str) -> tuple[onnx.NodeProto, int | None] | None:
    """(the *join_op* node producing the anchor's data input, the anchor's constant slot), or None."""
    operands = data_operand(g, anchor)
    if operands is None:
        return None
    join = g.producer.get(operands[0])
    if join is None or join.op_type != join_op or join.domain not in DEFAULT_DOMAINS:
        return None
    return join, operands[1]


Branches = list[tuple[onnx.NodeProto, int]]


def branch_producers(g, join: onnx.NodeProto, anchor: onnx.NodeProto) -> Branches | Refusal | None:
    """Each input's producer and its output rank, checked: a foldable node read only by *join*, with
    constant weights, all of one rank; and *join*'s output read only by *anchor*. None when no input
    comes from a foldable node at all (then there is nothing to fold into)."""
    origins = [g.producer.get(name) for name in join.input]
    if not any(o is not None and o.op_type in PRODUCERS for o in origins):
        return None
    out = join.output[0]
    if g.is_graph_output(out):
        return Refusal(Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT, out)
    if not g.only_reader(out, anchor):
        return Refusal(Reason.PRODUCER_HAS_OTHER_CONSUMERS, f"{out} ({join.op_type}) is also read elsewhere")
    found: list[tuple[onnx.NodeProto, int]] = []
    for name, origin in zip(join.input, origins, strict=True):
        producer = sole_producer(g, name, join, PRODUCERS)
        if isinstance(producer, Refusal):
            return producer
        if producer is None:
            return Refusal(Reason.BRANCH_NOT_FOLDABLE, f"{name} comes from {origin.op_type if origin else 'outside'}")
        weight = weights(g, producer, (1,))
        if isinstance(weight, Refusal):
            return weight
        assert weight[0] is not None  # W (input 1) is a required input
        found.append((producer, 2 if producer.op_type == "Gemm" else weight[0].ndim))
    if len({rank for _, rank in found}) != 1:
        return Refusal(Reason.SHAPE_MISMATCH, "branches of different ranks")
    return found


def anchor_affine(g, anchor: onnx.NodeProto, const_slot: int | None, rank: int, channels: int,
                  axis: int = 1) -> Affine | Refusal:
    """The anchor's per-channel (scale, shift) along *axis* (a BN's is 1) of a rank-*rank* tensor."""
    if const_slot is None:
        affine = bn_affine(g, anchor)
        if not isinstance(affine, Refusal) and affine[0].shape != (channels,):
            return Refusal(Reason.SHAPE_MISMATCH, f"{affine[0].shape[0]} parameters for {channels} channels")
        return affine
    const = g.constant(anchor.input[const_slot]).value
    if not is_float_dtype(const.dtype):
        return Refusal(Reason.UNSUPPORTED_DTYPE, f"constant is {const.dtype}")
    if anchor.op_type == "Div" and const_slot == 0:
        return Refusal(Reason.NOT_PER_CHANNEL, "constant divided by the tensor is not affine")
    vector = per_axis(const, rank, axis, channels)
    if isinstance(vector, Refusal):
        return vector
    with np.errstate(divide="ignore"):  # x / 0 gives inf; rounding refuses it as FOLD_OVERFLOW
        return fold_math.affine_of_op(anchor.op_type, vector, const_first=const_slot == 0)


def channels_of(g, producer: onnx.NodeProto) -> int:
    return output_channels(producer, g.constant(producer.input[1]).value)


def branch_plan(anchor, join, parts: list[tuple[onnx.NodeProto, Plan]]) -> BranchPlan:
    removed: dict[str, str | None] = {producer.output[0]: None for producer, _ in parts}
    removed[join.output[0]] = anchor.output[0]
    return BranchPlan(anchor=anchor, target=join, surviving_output=anchor.output[0], removed_tensors=removed,
                      parts=tuple(parts))


def rewrite_branches(g, plan: BranchPlan) -> None:
    """Write every producer's folded weights, rename their (changed) outputs, and let the join take the
    anchor's output name; the anchor goes."""
    join, anchor = plan.target, plan.anchor
    with g.editing(*(producer for producer, _ in plan.parts)):
        for producer, part in plan.parts:
            write_constants(g, producer, part)
            if producer.op_type == "Gemm":
                set_beta_one(producer)
            old = producer.output[0]
            producer.output[0] = renamed(g, old)
            join.input[list(join.input).index(old)] = producer.output[0]
    join.output[0] = anchor.output[0]
    g.remove_node(anchor)

