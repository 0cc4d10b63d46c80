"""Which tensors verification compares, and where in the candidate graph each one comes from.

Outputs are matched by name. ``check_tensors`` must be produced in both graphs. Per-layer tensors are
the node outputs of the main graph that depend on a graph input (activations: weights, Constant
nodes and shape arithmetic on them are skipped, since folding changes weights on purpose) and exist
in both graphs, in the candidate's node order, which ONNX requires to be topological.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import onnx

from bnfold.errors import UsageError
from bnfold.fold.graph import node_reads, runtime_inputs


@dataclass
class TensorPlan:
    outputs: list[str]  # reference graph outputs, in order
    missing: set[str]  # of those, the ones the candidate does not output
    extra: list[str]  # intermediate tensors to expose: check_tensors first, then per-layer
    checked: set[str]  # extra tensors that decide the verdict
    notes: list[str] = field(default_factory=list)

    @cached_property
    def per_layer(self) -> set[str]:
        """Extra tensors that only localise a divergence (not checked ones)."""
        return set(self.extra) - self.checked

    @cached_property
    def names(self) -> list[str]:
        """Every tensor compared: the outputs, then the extra tensors."""
        return self.outputs + self.extra

    def first_divergence(self, failing: Sequence[str], cand: onnx.GraphProto) -> dict[str, str | None] | None:
        """The failing tensor produced earliest in the candidate, with its node."""
        if not failing:
            return None
        producers = _producers(cand)
        known = [name for name in failing if name in producers]
        if not known:
            return {"tensor": failing[0], "node": None, "op_type": None}
        first = min(known, key=lambda name: producers[name][0])
        index, node = producers[first]
        return {"tensor": first, "node": node.name or f"<unnamed {node.op_type} #{index}>", "op_type": node.op_type}


def plan_tensors(ref: onnx.GraphProto, cand: onnx.GraphProto, check_tensors: Sequence[str],
                 per_layer: bool) -> TensorPlan:
    outputs = [o.name for o in ref.output]
    cand_outputs = {o.name for o in cand.output}
    missing = {n for n in outputs if n not in cand_outputs}
    notes = [f"candidate output {n!r} has no reference counterpart; not compared"
             for n in sorted(cand_outputs - set(outputs))]
    checked = _validate_checks(ref, cand, [n for n in dict.fromkeys(check_tensors) if n not in outputs])
    layers: list[str] = []
    if per_layer:
        ref_live = set(_activations(ref))
        taken = set(outputs) | set(checked)
        layers = [n for n in _activations(cand) if n in ref_live and n not in taken]
    return TensorPlan(outputs, missing, checked + layers, set(checked), notes)


def check_same_inputs(ref: onnx.GraphProto, cand: onnx.GraphProto) -> None:
    """Both models must take the same inputs with the same element types, or they cannot share feeds."""

    def inputs(graph: onnx.GraphProto) -> dict[str, int]:
        return {v.name: v.type.tensor_type.elem_type for v in runtime_inputs(graph)}

    ref_inputs, cand_inputs = inputs(ref), inputs(cand)
    if set(ref_inputs) != set(cand_inputs):
        only_ref = sorted(set(ref_inputs) - set(cand_inputs))
        only_cand = sorted(set(cand_inputs) - set(ref_inputs))
        raise UsageError(f"the models take different inputs: only in the reference: {only_ref or 'none'}; "
                         f"only in the candidate: {only_cand or 'none'}")
    differ = sorted(n for n in ref_inputs if ref_inputs[n] != cand_inputs[n])
    if differ:
        raise UsageError(f"inputs {differ} have different element types in the two models")


def _validate_checks(ref: onnx.GraphProto, cand: onnx.GraphProto, names: list[str]) -> list[str]:
    ref_made, cand_made = set(_producers(ref)), set(_producers(cand))
    problems = []
    for name in names:
        lacking = [label for label, made in (("reference", ref_made), ("candidate", cand_made)) if name not in made]
        if lacking:
            problems.append(f"{name!r} (not produced in the {' or the '.join(lacking)})")
    if problems:
        raise UsageError(f"cannot check tensors {', '.join(problems)}: "
                         "a checked tensor must be a node output in both models")
    return names


def _producers(graph: onnx.GraphProto) -> dict[str, tuple[int, onnx.NodeProto]]:
    return {out: (i, node) for i, node in enumerate(graph.node) for out in node.output if out}


def _activations(graph: onnx.GraphProto) -> list[str]:
    """Node outputs that depend on a non-initializer graph input, in node order."""
    live = {v.name for v in runtime_inputs(graph)}
    found: list[str] = []
    for node in graph.node:
        if any(name in live for name in node_reads(node)):
            for out in node.output:
                if out:
                    live.add(out)
                    found.append(out)
    return found


