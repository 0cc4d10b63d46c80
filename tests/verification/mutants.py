"""Faulty folds, for testing that verification catches them: four real bug patterns at a chosen folded conv.

Each mutant starts from a folded model (``bnfold.optimize(..., verify=False).model``) and changes the weight and/or
bias of one folded Conv/ConvTranspose, at the first, middle or deepest one in graph order:

- ``scale``: one output channel's weight and bias multiplied by 1.01 (a 1 % error in that channel's BN factor);
- ``shift``: one bias channel moved by 5 % of the bias spread (max - min) (a wrong running mean or beta);
- ``swap``: the bias channels holding the smallest and largest value exchanged (a permuted parameter);
- ``fp16``: weight and bias rounded through float16 and back (the fold computed in float16 for a float32 model;
  meaningless for a float16 model, whose weights already are float16, so it is refused there).

The channel a mutant changes is chosen from the folded values alone (the output channel whose weight has the
largest norm), so the same mutant can be made on a finished model (``mutate``) or injected into ``bnfold.optimize``
while it folds (``injected``). Returned records say which node and tensors were changed, and which tensor a
per-layer verification should name as the first divergence.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

KINDS = ("scale", "shift", "swap", "fp16")
DEPTHS = ("first", "middle", "deepest")
SCALE_FACTOR = 1.01
SHIFT_OF_SPREAD = 0.05
CONV_OPS = ("Conv", "ConvTranspose")


class NotApplicable(ValueError):
    """This mutant cannot be made at that conv (no bias, float16 weights, all biases equal, shared weight)."""


@dataclass(frozen=True)
class Mutant:
    """What was changed: ``node`` (the folded conv), ``output`` (its output tensor, where a per-layer check must
    see the divergence start), ``tensors`` (initializers rewritten) and ``channels`` (output channels touched)."""

    model: onnx.ModelProto
    kind: str
    depth: str
    node: str
    output: str
    tensors: tuple[str, ...]
    channels: tuple[int, ...]
    description: str


def folded_convs(model: onnx.ModelProto, applied: Sequence) -> list[onnx.NodeProto]:
    """The Conv/ConvTranspose nodes of the main graph that absorbed a fold, in graph order.

    ``applied`` is ``FoldReport.applied``: each fold names its ``target`` node and the ``output`` tensor it kept."""
    targets = {a.target for a in applied if getattr(a, "graph", "main") == "main" and a.target}
    outputs = {a.output for a in applied if getattr(a, "graph", "main") == "main"}
    return [n for n in model.graph.node
            if n.op_type in CONV_OPS and ((n.name and n.name in targets) or n.output[0] in outputs)]


def pick(convs: Sequence[onnx.NodeProto], depth: str) -> onnx.NodeProto:
    """The first, middle or deepest (last in graph order) of ``convs``."""
    if not convs:
        raise NotApplicable("no folded conv in this model")
    index = {"first": 0, "middle": len(convs) // 2, "deepest": len(convs) - 1}.get(depth)
    if index is None:
        raise ValueError(f"depth must be one of {DEPTHS}, not {depth!r}")
    return convs[index]


def mutate(folded: onnx.ModelProto, applied: Sequence, kind: str, depth: str) -> Mutant:
    """A faulty copy of ``folded``: mutant ``kind`` at the ``depth`` folded conv; ``folded`` itself is untouched."""
    node_name = pick(folded_convs(folded, applied), depth).name
    model = onnx.ModelProto()
    model.CopyFrom(folded)
    node = _node(model, node_name)
    tensors, channels, text = apply_in_place(model, node, kind)
    return Mutant(model, kind, depth, node_name, node.output[0], tensors, channels, text)


def apply_in_place(model: onnx.ModelProto, node: onnx.NodeProto, kind: str) -> tuple[tuple[str, ...],
                                                                                       tuple[int, ...], str]:
    """Make mutant ``kind`` at ``node`` of ``model`` in place; (tensors changed, channels, description)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if len(node.input) < 3 or not node.input[2]:
        raise NotApplicable(f"{node.name} has no bias")
    weight_proto, bias_proto = (_owned_tensor(model, node, slot) for slot in (1, 2))
    weight, bias = numpy_helper.to_array(weight_proto).copy(), numpy_helper.to_array(bias_proto).copy()
    rows = _channel_index(node, weight)
    channel = int(np.argmax([np.linalg.norm(weight[rows(c)].astype(np.float64)) for c in range(bias.size)]))
    if kind == "scale":
        weight[rows(channel)] *= weight.dtype.type(SCALE_FACTOR)
        bias[channel] *= bias.dtype.type(SCALE_FACTOR)
        changed, channels = (weight_proto, bias_proto), (channel,)
        text = f"output channel {channel} of {node.name}: weight and bias x{SCALE_FACTOR}"
    elif kind == "shift":
        spread = float(bias.max()) - float(bias.min())
        if spread == 0.0:
            raise NotApplicable(f"{node.name}: all bias channels are equal")
        bias[channel] = bias.dtype.type(float(bias[channel]) + SHIFT_OF_SPREAD * spread)
        changed, channels = (bias_proto,), (channel,)
        text = f"bias channel {channel} of {node.name} + {SHIFT_OF_SPREAD:.0%} of the bias spread ({spread:.4g})"
    elif kind == "swap":
        lo, hi = int(np.argmin(bias)), int(np.argmax(bias))
        if bias[lo] == bias[hi]:
            raise NotApplicable(f"{node.name}: all bias channels are equal")
        bias[[lo, hi]] = bias[[hi, lo]]
        changed, channels = (bias_proto,), (lo, hi)
        text = f"bias channels {lo} and {hi} of {node.name} swapped"
    else:
        weight, bias, changed = _through_float16(node, weight_proto, weight, bias_proto, bias)
        channels = tuple(range(bias.size))
        text = f"weight and bias of {node.name} rounded through float16"
    for proto, value in ((weight_proto, weight), (bias_proto, bias)):
        if proto in changed:
            _write(proto, value)
    return tuple(p.name for p in changed), channels, text


def _through_float16(node, weight_proto, weight, bias_proto, bias):
    if weight.dtype == np.float16 or bias.dtype == np.float16:
        raise NotApplicable(f"{node.name}: weights already float16, rounding through float16 changes nothing")
    weight16 = weight.astype(np.float16).astype(weight.dtype)
    bias16 = bias.astype(np.float16).astype(bias.dtype)
    changed = tuple(p for p, old, new in ((weight_proto, weight, weight16), (bias_proto, bias, bias16))
                    if not np.array_equal(old, new))
    if not changed:
        raise NotApplicable(f"{node.name}: weight and bias are exactly representable in float16")
    return weight16, bias16, changed


def _channel_index(node: onnx.NodeProto, weight: np.ndarray):
    """For an output channel, the index of its slice of the weight (Conv: axis 0; ConvTranspose: axis 1 within
    its group's input rows, ONNX layout (C_in, C_out / group, k...))."""
    if node.op_type == "Conv":
        return lambda c: (c,)
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    per_group_in, per_group_out = weight.shape[0] // group, weight.shape[1]

    def index(c: int) -> tuple:
        g = c // per_group_out
        return (slice(g * per_group_in, (g + 1) * per_group_in), c % per_group_out)

    return index


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _owned_tensor(model: onnx.ModelProto, node: onnx.NodeProto, slot: int) -> onnx.TensorProto:
    """The initializer (or Constant node value) behind input ``slot``; refused when another node reads it too,
    since changing it would then change more than this fold."""
    name = node.input[slot]
    readers = sum(name in n.input for n in model.graph.node)
    if readers != 1:
        raise NotApplicable(f"{name} is read by {readers} nodes")
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return tensor
    for const in model.graph.node:
        if const.op_type == "Constant" and const.output[0] == name:
            attr = next((a for a in const.attribute if a.name == "value"), None)
            if attr is not None:
                return attr.t
    raise NotApplicable(f"{name} is not a constant of the main graph")


def _write(proto: onnx.TensorProto, value: np.ndarray) -> None:
    name = proto.name
    proto.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))


def _bnfold_modules_holding(function) -> list[tuple[object, str]]:
    found = []
    for mod_name, module in list(sys.modules.items()):
        if mod_name == "bnfold" or mod_name.startswith("bnfold."):
            for attr, value in list(vars(module).items()):
                if value is function:
                    found.append((module, attr))
    return found


@contextlib.contextmanager
def injected(kind: str, node_name: str) -> Iterator[list[str]]:
    """While active, every fold pass of ``bnfold.optimize`` that folds into ``node_name`` makes mutant ``kind``
    there right after folding (a re-fold that leaves that fold out leaves the conv alone). Yields the list of
    descriptions of mutants made, one per fold pass that made one.

    Works by wrapping ``bnfold.fold.driver.fold_model`` wherever a bnfold module holds it, so it follows the
    function, not the modules that happen to import it today."""
    import bnfold.optimizer  # noqa: F401  (loads the modules that hold fold_model)
    from bnfold.fold import driver

    original = driver.fold_model
    made: list[str] = []

    def faulty_fold_model(model, *args, **kwargs):
        outcome = original(model, *args, **kwargs)
        if any(a.target == node_name and getattr(a, "graph", "main") == "main" for a in outcome.applied):
            try:
                made.append(apply_in_place(model, _node(model, node_name), kind)[2])
            except NotApplicable:  # a re-fold without some folds may leave this conv where the mutant can't go
                pass
        return outcome

    holders = _bnfold_modules_holding(original)
    for module, attr in holders:
        setattr(module, attr, faulty_fold_model)
    try:
        yield made
    finally:
        for module, attr in holders:
            setattr(module, attr, original)
