"""Refusing invalid graphs before anything folds them: one line naming the first problem found.

Protobuf and bnfold's folds accept graphs onnxruntime would never run, and a fold could even write them out
as if they were fine. Checked here, in time linear in the graph (no serialisation of the weights):

- tensors: known data types, sane dims, data of the declared size (``bnfold.io.tensor_check``);
- structure, in every (sub)graph: each value produced once, every read produced by something (a node, an
  input, an initializer, an enclosing graph), no cycles (nodes may come in any order: onnxruntime sorts
  them), graph outputs produced;
- operators bnfold folds: a Conv/ConvTranspose weight of rank 3 or more matching its input's declared rank
  and ``kernel_shape``; BatchNormalization parameters and input of a float type;
- ``onnx.checker`` (operator schemas, attribute types, input counts) on a light copy: nodes in dependency
  order, initializers turned into graph inputs of the same type and shape, so no weight is copied.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import onnx
from onnx import TensorProto

from bnfold.errors import ModelLoadError
from bnfold.io.tensor_check import MalformedTensor, check_tensors

__all__ = ["check_graph"]

_FLOATS = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16})
_DEFAULT = ("", "ai.onnx")


class _Invalid(ValueError):
    pass


def check_graph(model: onnx.ModelProto, path: str | Path | None = None) -> None:
    """Raise ModelLoadError (exit 3) naming the first structural problem of *model* (see the module docstring)."""
    where = f"{path}" if path is not None else "the model"
    try:
        check_tensors(model)
        order, free = _scope(model.graph)
        if free:
            name, reader = next(iter(free.items()))
            raise _Invalid(f"{reader} reads {name!r}, which nothing produces")
        _check_outputs(model.graph)
        _run_checker(model, order)
    except (_Invalid, MalformedTensor) as exc:
        raise ModelLoadError(f"invalid model {where}: {exc}") from None


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name or '(unnamed)'!r}"


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.HasField("g"):
            graphs.append(attr.g)
        graphs.extend(attr.graphs)
    return graphs


def _scope(graph: onnx.GraphProto) -> tuple[list[int], dict[str, str]]:
    """(node indices in dependency order, names read but not defined in *graph* -> who reads them)."""
    defined = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    defined |= {sparse.values.name for sparse in graph.sparse_initializer}
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in filter(None, node.output):
            if name in producer or name in defined:
                first = _label(graph.node[producer[name]]) if name in producer else "a graph input or initializer"
                raise _Invalid(f"{name!r} has two producers: {first} and {_label(node)}")
            producer[name] = index
    free: dict[str, str] = {}
    needs: list[set[int]] = []
    types = _declared(graph)
    for node in graph.node:
        reads = {name: _label(node) for name in filter(None, node.input)}
        for sub in _subgraphs(node):
            reads.update((name, who) for name, who in _scope(sub)[1].items() if name not in reads)
        _check_operator(types, node)
        needs.append({producer[name] for name in reads if name in producer})
        free.update((name, who) for name, who in reads.items()
                    if name not in producer and name not in defined and name not in free)
    return _dependency_order(graph, needs), free


def _dependency_order(graph: onnx.GraphProto, needs: list[set[int]]) -> list[int]:
    waiting = [len(need) for need in needs]
    readers: list[list[int]] = [[] for _ in needs]
    for index, need in enumerate(needs):
        for source in need:
            readers[source].append(index)
    ready = deque(i for i, count in enumerate(waiting) if count == 0)
    order: list[int] = []
    while ready:
        index = ready.popleft()
        order.append(index)
        for reader in readers[index]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if len(order) < len(needs):
        stuck = next(i for i, count in enumerate(waiting) if count)
        raise _Invalid(f"the graph has a cycle through {_label(graph.node[stuck])}")
    return order


def _check_outputs(graph: onnx.GraphProto) -> None:
    known = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    known |= {name for node in graph.node for name in node.output}
    for value in graph.output:
        if value.name not in known:
            raise _Invalid(f"graph output {value.name!r} is produced by no node")


def _declared(graph: onnx.GraphProto) -> dict[str, tuple[int | None, int | None]]:
    """name -> (element type, rank) where *graph* declares them (initializers, value infos); None: unknown."""
    types: dict[str, tuple[int | None, int | None]] = {}
    for value in (*graph.value_info, *graph.input):
        if value.type.HasField("tensor_type"):
            tensor_type = value.type.tensor_type
            rank = len(tensor_type.shape.dim) if tensor_type.HasField("shape") else None
            types[value.name] = (tensor_type.elem_type or None, rank)
    for tensor in graph.initializer:
        types[tensor.name] = (tensor.data_type, len(tensor.dims))
    return types


def _check_operator(types: dict[str, tuple[int | None, int | None]], node: onnx.NodeProto) -> None:
    if node.domain not in _DEFAULT:
        return
    if node.op_type in ("Conv", "ConvTranspose") and len(node.input) >= 2:
        _check_conv(types, node)
    elif node.op_type == "BatchNormalization":
        for name in filter(None, node.input[:5]):
            elem = types.get(name, (None, None))[0]
            if elem is not None and elem not in _FLOATS:
                raise _Invalid(f"{_label(node)} reads {name!r} of type {TensorProto.DataType.Name(elem)}; "
                               "BatchNormalization takes float tensors")


def _check_conv(types: dict[str, tuple[int | None, int | None]], node: onnx.NodeProto) -> None:
    weight_rank = types.get(node.input[1], (None, None))[1]
    if weight_rank is None:
        return
    if weight_rank < 3:
        raise _Invalid(f"{_label(node)} has a weight {node.input[1]!r} of rank {weight_rank}; a {node.op_type} "
                       "weight has rank 3 or more (filters, channels, kernel dims)")
    input_rank = types.get(node.input[0], (None, None))[1]
    if input_rank is not None and input_rank != weight_rank:
        raise _Invalid(f"{_label(node)}: input {node.input[0]!r} has rank {input_rank} but weight "
                       f"{node.input[1]!r} has rank {weight_rank}; they must match")
    for attr in node.attribute:
        if attr.name == "kernel_shape" and len(attr.ints) != weight_rank - 2:
            raise _Invalid(f"{_label(node)}: kernel_shape has {len(attr.ints)} dims but weight "
                           f"{node.input[1]!r} has {weight_rank - 2} kernel dims")


def _run_checker(model: onnx.ModelProto, order: list[int]) -> None:
    """onnx.checker on the structure: nodes in dependency order, initializers as typed graph inputs."""
    light = _header(model)
    graph = model.graph
    light.graph.name = graph.name
    light.graph.node.extend(_light_node(graph.node[index]) for index in order)
    light.graph.input.extend(map(_with_shape, graph.input))
    light.graph.output.extend(map(_with_shape, graph.output))
    light.graph.value_info.extend(graph.value_info)
    inputs = {value.name for value in graph.input}
    for tensor in graph.initializer:
        if tensor.name not in inputs:
            light.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    try:
        onnx.checker.check_model(light)
    except onnx.checker.ValidationError as exc:
        raise _Invalid(" ".join(str(exc).split())) from None


def _with_shape(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """The checker wants a shape on every graph input and output; onnxruntime (rightly) runs without one."""
    if not value.type.HasField("tensor_type") or value.type.tensor_type.HasField("shape"):
        return value
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    copy.type.tensor_type.shape.SetInParent()
    return copy


def _stand_in(tensor: TensorProto) -> TensorProto:
    """An external tensor as the checker may see it (it would look for the data file from the current folder)."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return tensor
    return TensorProto(name=tensor.name, data_type=tensor.data_type, dims=[0], raw_data=b"")


def _light_node(node: onnx.NodeProto) -> onnx.NodeProto:
    if not any(attr.HasField("t") or attr.tensors or attr.HasField("g") or attr.graphs for attr in node.attribute):
        return node
    light = onnx.NodeProto()
    light.CopyFrom(node)
    for attr in light.attribute:
        if attr.HasField("t"):
            attr.t.CopyFrom(_stand_in(attr.t))
        for index, tensor in enumerate(attr.tensors):
            attr.tensors[index].CopyFrom(_stand_in(tensor))
        for sub in [attr.g] if attr.HasField("g") else attr.graphs:
            for index, tensor in enumerate(sub.initializer):
                sub.initializer[index].CopyFrom(_stand_in(tensor))
            for index, inner in enumerate(sub.node):
                sub.node[index].CopyFrom(_light_node(inner))
    return light


def _header(model: onnx.ModelProto) -> onnx.ModelProto:
    header = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name,
                             domain=model.domain, model_version=model.model_version)
    header.opset_import.extend(model.opset_import)
    header.functions.extend(model.functions)
    return header
