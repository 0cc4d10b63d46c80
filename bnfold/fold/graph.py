"""A read-mostly index over one GraphProto, plus the few edits folding rules need.

The index answers: who produces a tensor, who reads it (subgraph references included),
is it a graph output, is it a load-time constant (and if not, why). Subgraphs of If/Loop/Scan
get their own index whose constant lookups fall through to the enclosing graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnfold.fold.constant_eval import CONSTANT_OPS, evaluate_node
from bnfold.reasons import Reason

if TYPE_CHECKING:
    from bnfold.io.lazy_data import DataFolder

FLOAT_DTYPES = frozenset({np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)})


def subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """(attribute name, graph) for every graph attribute of *node*."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for i, g in enumerate(attr.graphs):
                yield f"{attr.name}[{i}]", g


def names_used_inside(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read anywhere inside *graph* (recursively): outer-scope references among them."""
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for _, sub in subgraphs(node):
            used |= names_used_inside(sub)
    used.update(o.name for o in graph.output)
    return used


def runtime_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a caller feeds: those that are not also initializers (overridable defaults)."""
    initializers = {t.name for t in graph.initializer}
    return [v for v in graph.input if v.name not in initializers]


def node_reads(node: onnx.NodeProto) -> set[str]:
    """Names *node* reads: its inputs and the outer-scope names its subgraphs use."""
    reads = {n for n in node.input if n}
    for _, sub in subgraphs(node):
        reads |= names_used_inside(sub)
    return reads


def input_name(node: onnx.NodeProto, slot: int) -> str:
    """The name at input *slot* of *node*, or "" where that optional input is absent."""
    return node.input[slot] if slot < len(node.input) else ""


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name in *graph* and its subgraphs, for collision-free new names."""
    names = {i.name for i in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
    names |= {v.name for v in graph.value_info} | {s.values.name for s in graph.sparse_initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
        for _, sub in subgraphs(node):
            names |= all_names(sub)
    names.discard("")
    return names


def assign_array(tensor: onnx.TensorProto, value: np.ndarray, name: str) -> None:
    """Make *tensor* equal to ``numpy_helper.from_array(value, name)``, copying the data only once.

    Building a separate proto and copying it in costs two more copies of every folded weight (for a
    100 MB model, a noticeable share of the fold); plain float arrays get their fields set directly.
    Other dtypes go through onnx's own encoder. Either way every old field goes, the external data
    location of a lazily loaded tensor included: the tensor now holds its new value inline.
    """
    if value.dtype not in FLOAT_DTYPES:
        tensor.CopyFrom(numpy_helper.from_array(value, name))
        return
    tensor.Clear()
    tensor.dims.extend(value.shape)
    if name:
        tensor.name = name
    tensor.raw_data = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
    tensor.data_type = helper.np_dtype_to_tensor_dtype(value.dtype)


def is_float_dtype(dtype: np.dtype) -> bool:
    return np.dtype(dtype) in FLOAT_DTYPES or np.dtype(dtype).name == "bfloat16"


@dataclass(frozen=True)
class ConstLookup:
    """A constant's value, or why it isn't one."""

    value: np.ndarray | None
    reason: Reason | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


class NameAllocator:
    """Hands out tensor names that collide with nothing in the model, subgraphs included."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._taken = all_names(model.graph)
        for fn in model.functions:
            self._taken.update(n for node in fn.node for n in list(node.input) + list(node.output))

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._taken:
            name, i = f"{base}_{i}", i + 1
        self._taken.add(name)
        return name


class GraphIndex:
    """Producer/consumer maps and constant lookups for one graph; rebuilt with :meth:`refresh`."""

    def __init__(self, graph: onnx.GraphProto, *, label: str, opset: int, names: NameAllocator,
                 parent: GraphIndex | None = None, ranks=None, precise: dict[str, np.ndarray] | None = None,
                 data: DataFolder | None = None) -> None:
        self.graph, self.label, self.opset, self.names, self.parent = graph, label, opset, names, parent
        self.ranks = ranks  # a RankOracle shared by the whole model, or None
        self.data = data  # where a lazily loaded model's external initializers are read from, on demand
        # float64 values of constants folds wrote (before rounding), shared by the whole model: a chain of
        # folds into one weight (Conv -> BN -> BN, Conv -> Mul -> Add) then rounds once, not once per fold
        self.precise = {} if precise is None else precise
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the maps from scratch (one pass over the node list); edits use :meth:`editing`."""
        self._doomed: dict[int, onnx.NodeProto] = {}
        g = self.graph
        self.initializers = {t.name: t for t in g.initializer}
        self.inputs = {i.name for i in g.input}
        self.outputs = {o.name for o in g.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in g.node:
            self._index(node)
        self._cache: dict[str, ConstLookup] = {}

    def _index(self, node: onnx.NodeProto) -> None:
        for out in node.output:
            if out:
                self.producer[out] = node
        for name in node_reads(node):
            self.consumers.setdefault(name, []).append(node)

    def _unindex(self, node: onnx.NodeProto, outputs: list[str], reads: set[str]) -> None:
        for out in outputs:
            if self.producer.get(out) is node:
                del self.producer[out]
        for name in reads:
            kept = [n for n in self.consumers.get(name, ()) if n is not node]
            if kept:
                self.consumers[name] = kept
            else:
                self.consumers.pop(name, None)

    @contextmanager
    def editing(self, *nodes: onnx.NodeProto) -> Iterator[None]:
        """Edit *nodes* (a rewrite); afterwards only their entries are re-indexed, so a fold costs
        time in proportion to what it touched, not to the graph: optimize stays linear in model size."""
        before = [(node, [o for o in node.output if o], node_reads(node)) for node in nodes]
        yield
        for node, outputs, reads in before:
            self._unindex(node, outputs, reads)
            for name in (*outputs, *reads):
                self._cache.pop(name, None)
        for node, _, _ in before:
            if id(node) not in self._doomed:
                self._index(node)

    def flush(self) -> None:
        """Delete the nodes :meth:`remove_node` marked, in one sweep over the node list."""
        if not self._doomed:
            return
        doomed = [i for i, node in enumerate(self.graph.node) if id(node) in self._doomed]
        for i in reversed(doomed):
            del self.graph.node[i]
        self._doomed = {}

    # ---- questions -------------------------------------------------------------------------
    def readers(self, name: str) -> list[onnx.NodeProto]:
        return self.consumers.get(name, [])

    def is_graph_output(self, name: str) -> bool:
        return name in self.outputs

    def only_reader(self, name: str, node: onnx.NodeProto) -> bool:
        """True when *node* is the single reader of *name* (once) and *name* is no graph output."""
        readers = self.readers(name)
        return (not self.is_graph_output(name) and len(readers) == 1 and readers[0] is node
                and list(node.input).count(name) == 1)

    def rank(self, name: str) -> int | None:
        return None if self.ranks is None else self.ranks.rank(name)

    def constant(self, name: str) -> ConstLookup:
        """The load-time value of *name*, looking through constant-only subgraphs and outer scopes."""
        if name not in self._cache:
            self._cache[name] = self._lookup(name)
        return self._cache[name]

    def _lookup(self, name: str) -> ConstLookup:
        if name in self.initializers:
            if name in self.inputs:
                return ConstLookup(None, Reason.OVERRIDABLE_INITIALIZER)
            return ConstLookup(self._initializer_value(self.initializers[name]))
        if name in self.inputs:
            return ConstLookup(None, Reason.WEIGHT_NOT_CONSTANT)
        node = self.producer.get(name)
        if node is not None:
            return self._evaluate(node, name)
        if self.parent is not None:
            return self.parent.constant(name)
        return ConstLookup(None, Reason.WEIGHT_NOT_CONSTANT)

    def _initializer_value(self, tensor: onnx.TensorProto) -> np.ndarray:
        if self.data is not None and tensor.data_location == onnx.TensorProto.EXTERNAL:
            return self.data.array(tensor)  # read now, from the checked range only; the proto stays external
        return numpy_helper.to_array(tensor)

    def _evaluate(self, node: onnx.NodeProto, name: str) -> ConstLookup:
        if node.op_type not in CONSTANT_OPS or list(node.output).index(name) != 0:
            return ConstLookup(None, Reason.WEIGHT_NOT_CONSTANT)
        args = []
        for inp in node.input:
            if not inp:
                continue
            found = self.constant(inp)
            if found.value is None:
                return found
            args.append(found.value)
        value = evaluate_node(node, args, self.opset)
        return ConstLookup(value) if value is not None else ConstLookup(None, Reason.WEIGHT_NOT_CONSTANT)

    # ---- edits -------------------------------------------------------------------------------
    def exact(self, name: str, stored: np.ndarray | None) -> np.ndarray | None:
        """The float64 value a fold computed for *name*, if any, else the *stored* (rounded) value."""
        return self.precise.get(name, stored) if name else stored

    def set_constant_input(self, node: onnx.NodeProto, slot: int, value: np.ndarray, role: str,
                           precise: np.ndarray | None = None) -> None:
        """Make input *slot* of *node* the constant *value*, never touching a tensor others read.

        An initializer or Constant node read only by *node* is updated in place (its name kept);
        anything else gets a fresh, collision-free initializer in this graph. *precise* (the float64
        value before rounding) is remembered for later folds into the same tensor.
        """
        name = input_name(node, slot)
        if name and self.only_reader(name, node):
            if name in self.initializers and name not in self.inputs:
                assign_array(self.initializers[name], value, name)
                return self._remember(name, precise)
            producer = self.producer.get(name)
            if producer is not None and producer.op_type == "Constant":
                del producer.attribute[:]
                assign_array(producer.attribute.add(name="value", type=onnx.AttributeProto.TENSOR).t, value, "")
                return self._remember(name, precise)
        new_name = self.add_initializer(value, f"{node.name or node.output[0]}_{role}")
        self._remember(new_name, precise)
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = new_name

    def _remember(self, name: str, precise: np.ndarray | None) -> None:
        """Keep *name*'s float64 value for later folds, or forget an earlier one that is now stale."""
        if precise is None:
            self.precise.pop(name, None)
        else:
            self.precise[name] = precise

    def add_initializer(self, value: np.ndarray, base: str) -> str:
        """A new initializer holding *value*, under a collision-free name derived from *base*."""
        name = self.names.fresh(base)
        tensor = self.graph.initializer.add()
        assign_array(tensor, value, name)
        self.initializers[name] = tensor
        return name

    def remove_node(self, node: onnx.NodeProto) -> None:
        """Mark *node* for deletion (inside :meth:`editing`); :meth:`flush` deletes the marked nodes."""
        self._doomed[id(node)] = node
