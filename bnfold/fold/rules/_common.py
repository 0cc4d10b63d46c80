"""Shared matching steps: BatchNormalization as an affine map, and folding an affine map into the
Conv / ConvTranspose / Gemm that produces its input. Rules compose these; they hold no state."""

from __future__ import annotations

import numpy as np
import onnx

from bnfold.fold import fold_math
from bnfold.fold.constant_eval import DEFAULT_DOMAINS, attribute_values
from bnfold.fold.graph import FLOAT_DTYPES, GraphIndex, input_name, is_float_dtype
from bnfold.fold.rules.base import Plan, Refusal
from bnfold.reasons import Reason

Affine = tuple[np.ndarray, np.ndarray]


def bn_affine(g: GraphIndex, bn: onnx.NodeProto) -> Affine | Refusal:
    """(scale, shift) of an inference-mode BatchNormalization, or why it isn't one."""
    attrs = attribute_values(bn)
    training = training_form(g.opset, attrs, len(bn.output))
    if training:
        return Refusal(Reason.TRAINING_MODE, training)
    if g.opset < 9 and attrs.get("spatial", 1) == 0:
        return Refusal(Reason.SPATIAL_ZERO, "spatial=0")
    extra = [o for o in bn.output[1:] if o and (g.readers(o) or g.is_graph_output(o))]
    if extra:
        return Refusal(Reason.EXTRA_OUTPUTS_USED, ", ".join(extra))
    params: list[np.ndarray] = []
    for name in bn.input[1:5]:
        found = g.constant(name)
        if found.value is None:
            reason = found.reason if found.reason is Reason.OVERRIDABLE_INITIALIZER else Reason.PARAMS_NOT_CONSTANT
            return Refusal(reason, name)
        params.append(found.value)
    if not all(is_float_dtype(p.dtype) for p in params):
        return Refusal(Reason.UNSUPPORTED_DTYPE, "non-float parameters")
    sizes = {p.size for p in params}
    if len(sizes) != 1 or any(p.ndim != 1 for p in params):
        return Refusal(Reason.SHAPE_MISMATCH, f"parameter shapes {[p.shape for p in params]}")
    with np.errstate(divide="ignore", invalid="ignore"):  # var + eps <= 0: non-finite, refused when rounding
        return fold_math.bn_scale_shift(params[0], params[1], params[2], params[3], eps=attrs.get("epsilon", 1e-5))


def training_form(opset: int, attrs: dict, outputs: int) -> str:
    """Why a BatchNormalization computes with batch statistics, or "" where it is in inference form.

    Opset 14+ says so with ``training_mode``; opsets 7-13 have no attribute: a node with more than one
    output slot (named or left empty, read or not) is in training mode, as the spec defines and as
    onnxruntime runs it; before opset 7, ``is_test=0`` means training."""
    if attrs.get("training_mode", 0) == 1:  # (before opset 14 the attribute is invalid: refused all the same)
        return "training_mode=1"
    if opset >= 14:
        return ""
    if opset >= 7:
        return f"opset {opset} with {outputs} outputs (more than one means training mode)" if outputs > 1 else ""
    return "is_test=0" if attrs.get("is_test", 0) == 0 else ""


def sole_producer(g: GraphIndex, name: str, anchor: onnx.NodeProto, ops: frozenset[str]):
    """The node of an op in *ops* producing *name*, checked to feed only *anchor*; None if absent."""
    producer = g.producer.get(name)
    if producer is None or producer.op_type not in ops or producer.domain not in DEFAULT_DOMAINS:
        return None
    if list(producer.output).index(name) != 0:
        return None
    if g.is_graph_output(name):
        return Refusal(Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT, name)
    if not g.only_reader(name, anchor):
        others = [n.name or n.op_type for n in g.readers(name) if n is not anchor]
        readers = ", ".join(others) or "the same node twice"
        return Refusal(Reason.PRODUCER_HAS_OTHER_CONSUMERS, f"{name} also read by {readers}")
    return producer


def weights(g: GraphIndex, node: onnx.NodeProto, slots: tuple[int, ...]) -> list[np.ndarray | None] | Refusal:
    """Constant values of *node*'s inputs at *slots* (None for an absent optional input)."""
    values: list[np.ndarray | None] = []
    for slot in slots:
        name = input_name(node, slot)
        if not name:
            values.append(None)
            continue
        found = g.constant(name)
        if found.value is None:
            return Refusal(found.reason or Reason.WEIGHT_NOT_CONSTANT, name)
        if not is_float_dtype(found.value.dtype):
            return Refusal(Reason.UNSUPPORTED_DTYPE, f"{name} is {found.value.dtype}")
        values.append(found.value)
    return values


CHAIN_OPS = frozenset({"BatchNormalization", "Mul", "Add", "Sub", "Div"})


def feeds_chain(g: GraphIndex, tensor: str) -> bool:
    """Whether *tensor* is read by a node that may fold into the same weights next (BN, Mul, Add, ...)."""
    return any(reader.op_type in CHAIN_OPS for reader in g.readers(tensor))


def for_chain(g: GraphIndex, output: str, precise: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """The float64 values a plan keeps: only where *output* feeds a chain (a later fold into the same
    weights reads them), so a plain Conv -> BN -> Relu keeps no float64 copy of its weights alive."""
    return precise if feeds_chain(g, output) else {}


def write_constants(g: GraphIndex, node: onnx.NodeProto, plan: Plan) -> None:
    """Write the plan's folded constants into *node*'s inputs (negative slots are not inputs of *node*:
    the rule writes those itself), each with the float64 value the plan keeps for it."""
    for slot, (value, role) in sorted(plan.constants.items()):
        if slot >= 0:
            g.set_constant_input(node, slot, value, role, plan.precise.get(slot))


FoldedConv = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # weight, bias rounded; weight, bias float64


def following_conv_fold(g, conv: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray | None, scale: np.ndarray,
                        shift: np.ndarray, group: int) -> FoldedConv | Refusal:
    """A per-input-channel affine folded into the Conv that reads it: (weight, bias) rounded once to the
    weight's dtype, and their float64 values (for a chain that folds into this Conv next); or the refusal."""
    w64, b64 = fold_math.fold_into_following_conv(g.exact(conv.input[1], weight),
                                                  g.exact(input_name(conv, 2), bias), scale, shift, group)
    new_w = rounded(w64, weight.dtype, "weight")
    if isinstance(new_w, Refusal):
        return new_w
    new_b = rounded(b64, weight.dtype, "bias")
    if isinstance(new_b, Refusal):
        return new_b
    return new_w, new_b, w64, b64


def rounded(values: np.ndarray, dtype: np.dtype, what: str, **underflow_check) -> np.ndarray | Refusal:
    """Round float64 fold results once to *dtype*, refusing overflow/underflow.

    Non-finite results (division by a zero constant, var + eps == 0) are refused as overflow too."""
    out, problem = fold_math.cast_checked(values, dtype, **underflow_check)
    if problem == "overflow":
        return Refusal(Reason.FOLD_OVERFLOW, f"{what} overflows {np.dtype(dtype).name} (or is not finite)")
    if problem == "underflow":
        return Refusal(Reason.FOLD_UNDERFLOW, f"{what} underflows {np.dtype(dtype).name}")
    assert out is not None  # cast_checked gives an array whenever it names no problem
    return out


def output_channels(node: onnx.NodeProto, weight: np.ndarray) -> int:
    """Number of output channels of a Conv / ConvTranspose / Gemm given its weight."""
    attrs = attribute_values(node)
    if node.op_type == "ConvTranspose":
        return weight.shape[1] * attrs.get("group", 1)
    if node.op_type == "Gemm":
        return weight.shape[0] if attrs.get("transB", 0) else weight.shape[1]
    return weight.shape[0]


def plan_producer_fold(g: GraphIndex, producer: onnx.NodeProto, anchor: onnx.NodeProto,
                       affine: Affine) -> Plan | Refusal:
    """Fold ``y = scale * producer(x) + shift`` into the producer's weight and bias."""
    scale, shift = affine
    found = weights(g, producer, (1, 2))
    if isinstance(found, Refusal):
        return found
    weight, bias = found
    assert weight is not None  # W (input 1) is a required input
    channels = output_channels(producer, weight)
    w_in, b_in = g.exact(producer.input[1], weight), g.exact(input_name(producer, 2), bias)
    if scale.shape != (channels,):
        return Refusal(Reason.SHAPE_MISMATCH, f"{scale.shape[0]} scale values for {channels} channels")
    attrs = attribute_values(producer)
    chained = feeds_chain(g, anchor.output[0])
    if producer.op_type == "Conv" and weight.dtype in FLOAT_DTYPES and not chained:
        return _plan_conv_blockwise(producer, anchor, weight, w_in, b_in, scale, shift)
    if producer.op_type == "Conv":
        w64, b64 = fold_math.fold_into_conv(w_in, b_in, scale, shift)
        layout = {"channel_axis": 0}
    elif producer.op_type == "ConvTranspose":
        group = attrs.get("group", 1)
        w64, b64 = fold_math.fold_into_conv_transpose(w_in, b_in, scale, shift, group)
        layout = {"group": group}  # output channels in the [C_in, C_out/g, k...] layout
    else:
        trans_b = bool(attrs.get("transB", 0))
        w64, b64 = fold_math.fold_into_gemm(w_in, b_in, scale, shift, trans_b=trans_b, beta=attrs.get("beta", 1.0))
        layout = {"channel_axis": 0 if trans_b else 1}
    new_w = rounded(w64, weight.dtype, "weight", reference=weight, scale=scale, **layout)
    if isinstance(new_w, Refusal):
        return new_w
    return _producer_plan(producer, anchor, new_w, b64, {1: w64, 2: b64} if chained else {})


def _plan_conv_blockwise(producer, anchor, weight, w_in, b_in, scale, shift) -> Plan | Refusal:
    """Conv -> affine with no further fold into these weights (so no float64 copy is kept for a chain):
    fold and round the weight a block of output channels at a time (fold_math.scale_rows_rounded)."""
    new_w, nonzero = fold_math.scale_rows_rounded(w_in, scale, weight.dtype)
    if new_w is None:
        return Refusal(Reason.FOLD_OVERFLOW, f"weight overflows {weight.dtype.name} (or is not finite)")
    if fold_math.lost_channels(nonzero, weight, scale):
        return Refusal(Reason.FOLD_UNDERFLOW, f"weight underflows {weight.dtype.name}")
    return _producer_plan(producer, anchor, new_w, fold_math.conv_bias(b_in, scale, shift), {})


def _producer_plan(producer, anchor, new_w: np.ndarray, b64: np.ndarray, precise: dict) -> Plan | Refusal:
    """Round the folded bias (to the weight's dtype) and describe the rewrite: the producer takes the
    anchor's output name; the producer's old output maps to it."""
    new_b = rounded(b64, new_w.dtype, "bias")
    if isinstance(new_b, Refusal):
        return new_b
    x_name, y_name = producer.output[0], anchor.output[0]
    return Plan(anchor=anchor, target=producer, constants={1: (new_w, "weight"), 2: (new_b, "bias")},
                precise=precise, surviving_output=y_name, removed_tensors={x_name: y_name})


def rewrite_producer_fold(g: GraphIndex, plan: Plan) -> None:
    """Write the folded constants, hand the anchor's output name to the producer, drop the anchor."""
    producer = plan.target
    write_constants(g, producer, plan)
    if producer.op_type == "Gemm":
        _set_float_attribute(producer, "beta", 1.0)
    producer.output[0] = plan.anchor.output[0]
    g.remove_node(plan.anchor)


def _set_float_attribute(node: onnx.NodeProto, name: str, value: float) -> None:
    for attr in node.attribute:
        if attr.name == name:
            attr.f = value
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))


class ProducerBnRule:
    """``producer -> BatchNormalization`` folded into the producer; one instance per producer op."""

    anchor_ops = frozenset({"BatchNormalization"})

    def __init__(self, name: str, producer_op: str) -> None:
        self.name = name
        self.producer_ops = frozenset({producer_op})

    def match(self, g: GraphIndex, bn: onnx.NodeProto) -> Plan | Refusal | None:
        producer = sole_producer(g, bn.input[0], bn, self.producer_ops)
        if producer is None or isinstance(producer, Refusal):
            return producer
        affine = bn_affine(g, bn)
        if isinstance(affine, Refusal):
            return affine
        return plan_producer_fold(g, producer, bn, affine)

    def rewrite(self, g: GraphIndex, plan: Plan) -> None:
        rewrite_producer_fold(g, plan)
