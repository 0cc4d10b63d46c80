"""matmul_affine: fold a per-channel Mul / Div (and, after a bias Add, Add / Sub and BatchNormalization) into
the MatMul producing its input: the decomposed BN of Keras Dense -> BN through tf2onnx, and Keras 3's BN.

Before:  x -> MatMul(W[K, C]) -> Mul(s) -> Add(t) -> y          (Keras: BN as Mul -> Add by [C] constants)
After:   x -> MatMul(W') -> Add(t) -> y                          (W'[:, c] = W[:, c] * s[c])
Before:  x -> MatMul(W) -> Add(b) -> Mul(s) -> y;   ... -> Add(b) -> Add(t) -> y;   ... -> Add(b) -> BN -> y
After:   x -> MatMul(W') -> Add(b') -> y                         (b' = b * s + t)

Math: the anchor is z -> a * z + d per channel of the MatMul output ((s, 0) for Mul, (1/c, 0) for z / c,
(1, c) for Add, (1, -c) for z - c, (-1, c) for c - z, BN's (scale, shift)). With the constant operand's free
axis on the output's channel axis (W second: the last axis; W first, [C, K] @ x[..., K, L]: axis -2),
a * (x W + b) + d = x (W a) + (a b + d). Without a bias Add only d = 0 folds (Mul, z / c); MatMul -> Add
is already the folded form. The constant must broadcast along that channel axis only and not widen the rank.
BN (axis 1) folds only where the channel axis is 1; a BN right after the MatMul is matmul_bn's.

Refuses: NOT_PER_CHANNEL (a constant on other axes, c / z), SHAPE_MISMATCH, MATMUL_LAYOUT, RANK_UNKNOWN,
and the common refusals (other readers, graph output, constants, dtype, overflow, BN's own).
"""

from __future__ import annotations

import numpy as np
import onnx

from bnfold.fold import fold_math
from bnfold.fold.constant_eval import DEFAULT_DOMAINS
from bnfold.fold.graph import is_float_dtype
from bnfold.fold.rules._axes import axis_view, matmul_layout, per_axis, renamed
from bnfold.fold.rules._common import bn_affine, for_chain, rounded, sole_producer, write_constants
from bnfold.fold.rules.base import Plan, Refusal
from bnfold.reasons import Reason

AFFINE_OPS = frozenset({"Mul", "Add", "Sub", "Div"})


def constant_operand(g, node: onnx.NodeProto) -> int | None:
    """The slot of the one constant operand of a binary elementwise node, or None."""
    if len(node.input) != 2 or node.domain not in DEFAULT_DOMAINS:
        return None
    found = [g.constant(name).ok for name in node.input]
    return found.index(True) if found.count(True) == 1 else None


def variable_operand(g, node: onnx.NodeProto) -> str:
    """The operand of the anchor that is not a constant (a BN's data input)."""
    if node.op_type == "BatchNormalization":
        return node.input[0]
    return next(name for name in node.input if not g.constant(name).ok)


def matmul_behind(g, name: str, anchor: onnx.NodeProto):
    """(matmul, bias_add or None) producing *name*, each read only by the next; a Refusal; or None."""
    producer = g.producer.get(name)
    if producer is None or producer.op_type not in ("MatMul", "Add"):
        return None
    if producer.op_type == "MatMul":
        matmul = sole_producer(g, name, anchor, frozenset({"MatMul"}))
        return matmul if matmul is None or isinstance(matmul, Refusal) else (matmul, None)
    slot = constant_operand(g, producer)
    if slot is None or not isinstance(g.producer.get(producer.input[1 - slot]), onnx.NodeProto):
        return None
    if g.producer[producer.input[1 - slot]].op_type != "MatMul":
        return None
    bias_add = sole_producer(g, name, anchor, frozenset({"Add"}))
    if bias_add is None or isinstance(bias_add, Refusal):
        return bias_add
    matmul = sole_producer(g, producer.input[1 - slot], bias_add, frozenset({"MatMul"}))
    return matmul if matmul is None or isinstance(matmul, Refusal) else (matmul, bias_add)


class MatMulAffineRule:
    name = "matmul_affine"
    anchor_ops = AFFINE_OPS | {"BatchNormalization"}

    def match(self, g, node: onnx.NodeProto) -> Plan | Refusal | None:
        is_bn = node.op_type == "BatchNormalization"
        const_slot = None if is_bn else constant_operand(g, node)
        if not is_bn and const_slot is None:
            return None
        found = matmul_behind(g, node.input[0 if const_slot is None else 1 - const_slot], node)
        if found is None or isinstance(found, Refusal):
            return found
        matmul, bias_add = found
        if bias_add is None and (is_bn or node.op_type in ("Add", "Sub")):
            return None  # matmul_bn's case, or MatMul -> Add: already the folded form
        layout = matmul_layout(g, matmul)
        if isinstance(layout, Refusal):
            return layout
        slot, free_axis, axis = layout
        weight = g.constant(matmul.input[slot]).value
        affine = self._affine(g, node, const_slot, g.rank(matmul.output[0]), axis, weight.shape[free_axis])
        if isinstance(affine, Refusal):
            return affine
        return _plan(g, node, matmul, bias_add, affine, slot, free_axis, axis)

    @staticmethod
    def _affine(g, node, const_slot, rank: int, axis: int, channels: int):
        if node.op_type == "BatchNormalization":
            if axis != 1:
                return Refusal(Reason.MATMUL_LAYOUT, f"the weight's free axis lands on axis {axis}, not 1")
            affine = bn_affine(g, node)
            if not isinstance(affine, Refusal) and affine[0].shape != (channels,):
                return Refusal(Reason.SHAPE_MISMATCH, f"{affine[0].shape[0]} channels vs {channels}")
            return affine
        const = g.constant(node.input[const_slot]).value
        if not is_float_dtype(const.dtype):
            return Refusal(Reason.UNSUPPORTED_DTYPE, f"constant is {const.dtype}")
        if node.op_type == "Div" and const_slot == 0:
            return Refusal(Reason.NOT_PER_CHANNEL, "constant divided by the tensor is not affine")
        vector = per_axis(const, rank, axis, channels)
        if isinstance(vector, Refusal):
            return vector
        with np.errstate(divide="ignore"):  # x / 0 gives inf; rounding refuses it as FOLD_OVERFLOW
            return fold_math.affine_of_op(node.op_type, vector, const_first=const_slot == 0)

    def rewrite(self, g, plan: Plan) -> None:
        matmul, anchor = plan.target, plan.anchor
        write_constants(g, matmul, plan)
        bias_add = g.producer.get(variable_operand(g, anchor)) if -1 in plan.constants else None
        if bias_add is None:
            matmul.output[0] = anchor.output[0]
        else:
            with g.editing(bias_add):
                slot = constant_operand(g, bias_add)
                assert slot is not None  # matmul_behind took this Add for its constant operand
                value, role = plan.constants[-1]
                if 0 in plan.constants or 1 in plan.constants:  # the MatMul output changes value: new name
                    fresh = renamed(g, matmul.output[0])
                    bias_add.input[1 - slot] = matmul.output[0] = fresh
                g.set_constant_input(bias_add, slot, value, role, plan.precise.get(-1))
                bias_add.output[0] = anchor.output[0]
        g.remove_node(anchor)


def _plan(g, anchor, matmul, bias_add, affine, slot: int, free_axis: int, axis: int) -> Plan | Refusal:
    scale, shift = affine
    weight = g.constant(matmul.input[slot]).value
    if not is_float_dtype(weight.dtype):
        return Refusal(Reason.UNSUPPORTED_DTYPE, f"weight is {weight.dtype}")
    constants, precise = {}, {}
    if not np.all(scale == 1.0):
        w64 = fold_math.fold_into_matmul(g.exact(matmul.input[slot], weight), scale, shift,
                                         channel_axis=free_axis)[0]
        new_w = rounded(w64, weight.dtype, "weight", reference=weight, scale=scale, channel_axis=free_axis)
        if isinstance(new_w, Refusal):
            return new_w
        constants[slot], precise[slot] = (new_w, "weight"), w64
    variable = variable_operand(g, anchor)
    removed: dict[str, str | None] = {variable: anchor.output[0]}
    if bias_add is not None:
        bias_name = bias_add.input[constant_operand(g, bias_add)]
        bias = g.constant(bias_name).value
        rank = g.rank(matmul.output[0])
        if not is_float_dtype(bias.dtype) or bias.ndim > rank:
            return Refusal(Reason.UNSUPPORTED_DTYPE if bias.ndim <= rank else Reason.NOT_PER_CHANNEL,
                           f"bias {bias_name} of shape {bias.shape} and dtype {bias.dtype}")
        b64 = np.asarray(g.exact(bias_name, bias), np.float64) * axis_view(scale, rank, axis) \
            + axis_view(shift, rank, axis)
        new_b = rounded(b64, bias.dtype, "bias")
        if isinstance(new_b, Refusal):
            return new_b
        constants[-1], precise[-1] = (new_b, "bias"), b64
        removed = {variable: None, matmul.output[0]: None} if slot in constants else {variable: None}
    return Plan(anchor=anchor, target=matmul, constants=constants,
                precise=for_chain(g, anchor.output[0], precise), surviving_output=anchor.output[0],
                removed_tensors=removed)


RULE = MatMulAffineRule()
