"""Initializers that are also graph inputs: constants in IR 3, overridable defaults from IR 4 on.

IR version 3 requires every initializer to be listed among the graph inputs, so old zoo models list all of
their weights there; onnxruntime refuses to feed them ("Invalid input name"): they are constants. From IR 4
on, an initializer listed as an input is a default that a caller may override, so folding it would bake in
a value the caller may replace: such sites are refused (``overridable_initializer``) unless the user opts
in with ``freeze_initializers``, which takes those entries out of the inputs for good.

``hold`` runs before folding: it takes the initializer-backed entries out of the main graph's inputs, so
the rules see plain constants (an IR-3 model is folded as IR 4 meanwhile). ``release`` runs after folding
and cleanup: an IR-3 model gets its inputs back, in their old order and with their old declarations where
the initializer behind them is unchanged; initializers the fold added are listed too (appended), and those
it removed are gone from the inputs as well. A frozen IR >= 4 model keeps only its real inputs.
Subgraph inputs are never touched (their meaning is fixed by the op that runs the subgraph).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

FIRST_IR_WITH_OPTIONAL_INPUTS = 4  # IR 4 relaxed "every initializer is a graph input"


@dataclass
class HeldInputs:
    """The main graph's input list before ``hold``, and what ``release`` must do with it."""

    entries: list[onnx.ValueInfoProto]
    ir_version: int
    removed: list[str]  # initializer-backed input names taken out
    restore: bool  # IR < 4: list the initializers as inputs again afterwards
    initializers: frozenset[str]  # the initializers before folding (those the fold adds are listed as new)


def hold(model: onnx.ModelProto, *, freeze: bool) -> HeldInputs | None:
    """Take the initializer-backed entries out of the main graph's inputs where they are constants (IR < 4)
    or the user froze them; None where there is nothing to hold."""
    graph = model.graph
    old_ir = 0 < model.ir_version < FIRST_IR_WITH_OPTIONAL_INPUTS  # (0: unset, no IR to go by: left as it was)
    if not (old_ir or freeze):
        return None
    initializers = {t.name for t in graph.initializer}
    removed = [v.name for v in graph.input if v.name in initializers]
    if not removed and not old_ir:  # (an IR-3 model must list the initializers a fold adds, even then)
        return None
    held = HeldInputs(entries=[_copy(v) for v in graph.input], ir_version=model.ir_version, removed=removed,
                      restore=old_ir, initializers=frozenset(initializers))
    kept = [v for v in held.entries if v.name not in initializers]
    del graph.input[:]
    graph.input.extend(kept)
    if old_ir:
        model.ir_version = FIRST_IR_WITH_OPTIONAL_INPUTS
    return held


def release(model: onnx.ModelProto, held: HeldInputs | None) -> list[str]:
    """Undo ``hold`` where the IR demands it; returns the input names removed for good (frozen ones)."""
    if held is None:
        return []
    if not held.restore:
        return held.removed
    model.ir_version = held.ir_version
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    real = {v.name for v in graph.input}
    entries = []
    for entry in held.entries:
        tensor = initializers.pop(entry.name, None)
        if entry.name in real:
            entries.append(entry)
        elif tensor is not None:  # an initializer still there: listed again, re-declared if it changed
            entries.append(entry if _declares(entry, tensor) else _declaration(tensor))
    # the fold's new initializers, appended in initializer order (one an IR-3 file left unlisted stays so)
    entries += [_declaration(t) for name, t in initializers.items() if name not in held.initializers]
    del graph.input[:]
    graph.input.extend(entries)
    return []


def _copy(entry: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(entry)
    return copy


def _declares(entry: onnx.ValueInfoProto, tensor: onnx.TensorProto) -> bool:
    """Whether *entry* still fits *tensor*: the same element type, and the same rank and sizes where it
    states any (a symbolic or unset size fits any), so an unchanged initializer keeps its declaration."""
    if not entry.type.HasField("tensor_type") or entry.type.tensor_type.elem_type != tensor.data_type:
        return False
    declared = entry.type.tensor_type
    if not declared.HasField("shape"):
        return True
    dims = declared.shape.dim
    return len(dims) == len(tensor.dims) and all(
        not d.HasField("dim_value") or d.dim_value == n for d, n in zip(dims, tensor.dims, strict=True))


def _declaration(tensor: onnx.TensorProto) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
