"""Which nodes of the candidate to recompute on the reference's values, and the magnitude twin that gives
each linear layer its tolerance (see :mod:`bnfold.verification.bound`).

A *site* is the candidate's computation of one tensor the reference also makes: the node producing it and,
walking back, any producers of inputs the reference does not make (e.g. the Add a MatMul fold appends).
Inputs the reference makes are fed with the reference's values; initializers are the candidate's weights.
A site whose walk leaves the main graph (outer-scope names) or grows past ``MAX_SITE_NODES`` is not local.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from bnfold.fold.graph import subgraphs
from bnfold.run.local_eval import LocalNodes, local_name

LINEAR = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MAX_SITE_NODES = 6


@dataclass
class Site:
    """The candidate's computation of *output*, to recompute on the reference's values."""

    output: str
    nodes: list[onnx.NodeProto]  # candidate nodes in graph order, the producer of *output* last
    fed: set[str] = field(default_factory=set)
    weights: set[str] = field(default_factory=set)
    constants: dict[str, onnx.TensorProto] = field(default_factory=dict)  # weights held by Constant nodes

    @property
    def linear(self) -> onnx.NodeProto | None:
        return next((n for n in reversed(self.nodes) if n.op_type in LINEAR), None)


class SitePlanner:
    """Plans sites in the candidate's main graph against the names the reference makes."""

    def __init__(self, ref_graph: onnx.GraphProto, cand_graph: onnx.GraphProto,
                 changed: set[str] | frozenset[str] = frozenset()) -> None:
        """*changed*: tensors the candidate computes differently under the same name (outputs of a node a
        fold rewrote, e.g. the MatMul whose Add a MatMul fold appends): never fed with the reference's value."""
        self.changed = set(changed)
        self.cand_inits = {t.name for t in cand_graph.initializer}
        self.constants = constant_tensors(cand_graph)
        self.producer = {out: node for node in cand_graph.node for out in node.output if out}
        self.order = {id(node): i for i, node in enumerate(cand_graph.node)}
        self.ref_known = {out for node in ref_graph.node for out in node.output if out}
        self.ref_known.update(v.name for v in ref_graph.input)

    def site(self, output: str, max_nodes: int = MAX_SITE_NODES) -> Site | None:
        """The site of *output*, or None where it cannot be recomputed locally."""
        node = self.producer.get(output)
        if node is None or any(True for _ in subgraphs(node)):
            return None
        site, pending, seen = Site(output, []), [node], set()
        while pending:
            current = pending.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            site.nodes.append(current)
            if len(site.nodes) > max_nodes:
                return None
            for name in current.input:
                if not name:
                    continue
                if name in self.cand_inits:
                    site.weights.add(name)
                elif name in self.constants:
                    site.weights.add(name)
                    site.constants[name] = self.constants[name]
                elif name in self.ref_known and name not in self.changed:
                    site.fed.add(name)
                elif name in self.producer and not any(True for _ in subgraphs(self.producer[name])):
                    pending.append(self.producer[name])
                else:
                    return None  # an outer-scope name, or one nothing in the main graph makes
        site.nodes.sort(key=lambda n: self.order[id(n)])
        return site


def constant_tensors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Tensors held by the graph's Constant nodes (``value`` attribute), by output name."""
    found = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0]:
            attr = next((a for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
            if attr is not None:
                found[node.output[0]] = attr.t
    return found


def lift(site: Site, lifted: LocalNodes) -> None:
    """Add *site*'s nodes to *lifted* (its fed inputs and weights read as they are, the rest locally)."""
    internal = {o for n in site.nodes for o in n.output if o}
    for node in site.nodes:
        reads = {name: ("weight" if name in site.weights else "internal" if name in internal else "fed")
                 for name in node.input if name}
        lifted.add(node, reads)


def spread_name(output: str) -> str:
    return output + "@spread"


def twin_nodes(site: Site) -> list[onnx.NodeProto]:
    """Nodes computing ``sqrt(sum w^2 x^2)`` for the site's linear layer, in float32, into ``spread_name``:
    the same layer (same attributes) on squared inputs and weights, bias dropped."""
    linear = site.linear
    if linear is None:
        return []
    internal = {o for n in site.nodes for o in n.output if o}
    out = spread_name(site.output)
    nodes, squared = [], []
    for slot in (0, 1):
        name = linear.input[slot]
        source = local_name(name) if name in internal else name
        cast, sq = f"{out}/cast{slot}", f"{out}/sq{slot}"
        nodes.append(helper.make_node("Cast", [source], [cast], to=onnx.TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [cast, cast], [sq]))
        squared.append(sq)
    twin = helper.make_node(linear.op_type, squared, [f"{out}/sum"])
    for attr in linear.attribute:
        copy = twin.attribute.add()
        copy.CopyFrom(attr)
        if linear.op_type == "Gemm" and attr.name == "alpha":
            copy.f = attr.f * attr.f
    nodes.append(twin)
    nodes.append(helper.make_node("Sqrt", [f"{out}/sum"], [out]))
    return nodes


def reduction_length(site: Site, shapes: Mapping[str, Sequence[int]]) -> int:
    """K of the site's linear layer from its weight's shape (C_in/group x kernel, or the GEMM's inner dim)."""
    linear = site.linear
    if linear is None:
        return 1
    attrs = {a.name: helper.get_attribute_value(a) for a in linear.attribute}
    weight = next((linear.input[s] for s in (1, 0) if linear.input[s] in shapes), None)
    shape = list(shapes.get(weight, ())) if weight else []
    if not shape:
        return 1
    if linear.op_type in ("Conv", "ConvTranspose"):
        per_group = shape[1] if linear.op_type == "Conv" else shape[0] // max(1, int(attrs.get("group", 1)))
        return max(1, int(per_group * math.prod(shape[2:])))
    if linear.op_type == "Gemm":
        return int(shape[1] if (weight == linear.input[1]) == bool(attrs.get("transB", 0)) else shape[0])
    return int(shape[-2] if weight == linear.input[1] else shape[-1])


def bias_of(site: Site, arrays: Mapping[str, np.ndarray], rank: int) -> np.ndarray | None:
    """|bias| of the site, broadcastable per channel against its output (None: no bias)."""
    linear = site.linear
    terms: list[np.ndarray] = []
    if linear is not None and len(linear.input) > 2 and linear.input[2] in arrays:
        b = np.abs(np.asarray(arrays[linear.input[2]], dtype=np.float64))
        if linear.op_type in ("Conv", "ConvTranspose") and b.ndim == 1 and rank >= 2:
            b = b.reshape((b.size,) + (1,) * (rank - 2))
        terms.append(b)
    for node in site.nodes:
        if node.op_type in ("Add", "Sub"):
            terms += [np.abs(np.asarray(arrays[n], dtype=np.float64)) for n in node.input if n in arrays]
    if not terms:
        return None
    try:
        return sum(terms[1:], terms[0])
    except ValueError:  # shapes that don't broadcast together: judge by the largest
        return np.asarray(max(float(t.max()) for t in terms if t.size))


def changed_tensors(ref_graph: onnx.GraphProto, cand_graph: onnx.GraphProto, same_weight) -> set[str]:
    """Outputs of candidate nodes that compute something else than the reference's producer of that name:
    another op, other inputs or attributes, or an initializer input whose content differs
    (``same_weight(name)``)."""
    ref_producer = {out: node for node in ref_graph.node for out in node.output if out}
    cand_inits = {t.name for t in cand_graph.initializer}
    changed: set[str] = set()
    for node in cand_graph.node:
        outputs = [o for o in node.output if o]
        ref = ref_producer.get(outputs[0]) if outputs else None
        same = (ref is not None and ref.op_type == node.op_type and list(ref.input) == list(node.input)
                and list(ref.output) == list(node.output) and ref.attribute == node.attribute
                and all(same_weight(n) for n in node.input if n in cand_inits))
        if not same:
            changed.update(outputs)
    return changed


def internal_tensors(cand_graph: onnx.GraphProto, changed: set[str]) -> set[str]:
    """Changed tensors that only changed nodes read: intermediates of a rewritten region, whose name the
    reference uses for another value (not comparable)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in cand_graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in cand_graph.output}
    return {t for t in changed if t not in outputs and readers.get(t)
            and all(any(o in changed for o in r.output if o) for r in readers[t])}


def taken_over(ref_graph: onnx.GraphProto, cand_graph: onnx.GraphProto, changed: set[str]) -> set[str]:
    """Changed tensors that another op now produces under the reference's name: a fold's result (the Conv
    that absorbed a BatchNormalization, the Add a MatMul fold leaves), which holds the value the reference
    computes under that name, so it is comparable. A name whose producer kept its op (a MatMul or a Concat
    branch with rescaled weights) may hold another value: not taken over."""
    ref_op = {out: node.op_type for node in ref_graph.node for out in node.output if out}
    return {out for node in cand_graph.node for out in node.output
            if out in changed and out in ref_op and ref_op[out] != node.op_type}


def window_twin(site: Site, weight: np.ndarray) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """A cheaper bound on ``spread`` for a float32 Conv with group 1 (Cauchy-Schwarz:
    ``sum w^2 x^2 <= max w^2 * sum x^2``): the window sums of x^2 over all input channels, square-rooted,
    times each output channel's max|w|. The sum over channels comes first (a 1x1 Conv of ones), then the
    window's (a one-channel Conv of ones with the layer's attributes): a one-output Conv over all channels
    at once would unfold every window of every channel. 2-4x looser than the exact twin, which float32's
    margin (a 1 % fault is ~900x its tolerance) affords. ([], {}) where it does not apply."""
    linear = site.linear
    attrs = {a.name: helper.get_attribute_value(a) for a in linear.attribute} if linear is not None else {}
    if linear is None or linear.op_type != "Conv" or int(attrs.get("group", 1)) != 1 or weight.ndim < 3:
        return [], {}
    data, out = linear.input[0], spread_name(site.output)
    internal = data in {o for n in site.nodes for o in n.output if o}
    source = local_name(data) if internal else data  # a fed input is float32 (the caller's check): no Cast
    spatial, rows = (1,) * (weight.ndim - 2), weight.reshape(weight.shape[0], -1)
    inits = {f"{out}/ones": np.ones((1, weight.shape[1], *spatial), np.float32),
             f"{out}/window_ones": np.ones((1, 1, *weight.shape[2:]), np.float32),
             f"{out}/peak": np.maximum(rows.max(axis=1), -rows.min(axis=1)).astype(np.float32).reshape(
                 (1, weight.shape[0], *spatial))}  # max|w| per output channel, without an |w| temporary
    nodes = [helper.make_node("Cast", [source], [f"{out}/cast0"], to=onnx.TensorProto.FLOAT)] if internal else []
    square = f"{out}/cast0" if internal else source
    nodes += [helper.make_node("Mul", [square, square], [f"{out}/sq0"]),
              helper.make_node("Conv", [f"{out}/sq0", f"{out}/ones"], [f"{out}/channels"])]
    window = helper.make_node("Conv", [f"{out}/channels", f"{out}/window_ones"], [f"{out}/window"])
    window.attribute.extend(a for a in linear.attribute if a.name != "group")
    nodes += [window, helper.make_node("Sqrt", [f"{out}/window"], [f"{out}/root"]),
              helper.make_node("Mul", [f"{out}/root", f"{out}/peak"], [out])]
    return nodes, inits
