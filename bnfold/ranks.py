"""Tensor ranks, for the rules that must prove which axis is the channel axis (MatMul).

Declared value_info/inputs/outputs are used first. Otherwise onnx shape inference runs once, lazily,
on a skeleton of the model whose large tensors carry no data (dims and dtypes only), so it never
copies the weights of a big model.
"""

from __future__ import annotations

import onnx

from bnfold.graph import subgraphs

_SKELETON_DATA_LIMIT = 1024  # bytes: smaller tensors keep their data (shape tensors for Reshape etc.)


def _declared(graph: onnx.GraphProto, ranks: dict[str, int]) -> None:
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            ranks.setdefault(info.name, len(info.type.tensor_type.shape.dim))
    for init in graph.initializer:
        ranks.setdefault(init.name, len(init.dims))
    for node in graph.node:
        for _, sub in subgraphs(node):
            _declared(sub, ranks)


def _strip(graph: onnx.GraphProto) -> None:
    for init in graph.initializer:
        if len(init.raw_data) > _SKELETON_DATA_LIMIT or init.data_location == onnx.TensorProto.EXTERNAL:
            init.ClearField("raw_data")
            init.ClearField("external_data")
            init.data_location = onnx.TensorProto.DEFAULT
    for node in graph.node:
        for _, sub in subgraphs(node):
            _strip(sub)


def shell(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of *model*'s header and main graph without its initializers (nodes, inputs, outputs,
    value_info, opsets, functions): the common start of every light copy of a model."""
    copy = onnx.ModelProto(ir_version=model.ir_version)
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    copy.graph.name = model.graph.name
    for field in ("node", "input", "output", "value_info"):
        getattr(copy.graph, field).extend(getattr(model.graph, field))
    return copy


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of *model* without large initializer data: cheap to build, enough for shape inference."""
    skeleton = shell(model)
    src, dst = model.graph, skeleton.graph
    for init in src.initializer:
        light = dst.initializer.add(name=init.name, data_type=init.data_type, dims=init.dims)
        if init.data_location != onnx.TensorProto.EXTERNAL and init.ByteSize() <= _SKELETON_DATA_LIMIT:
            light.CopyFrom(init)
    _strip(dst)
    return skeleton


class RankOracle:
    """Answers ``rank(name)`` for tensors anywhere in the model; None when it cannot be known."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self._ranks: dict[str, int] = {}
        _declared(model.graph, self._ranks)
        self._inferred = False

    def rank(self, name: str) -> int | None:
        if name not in self._ranks and not self._inferred:
            self._inferred = True
            try:
                inferred = onnx.shape_inference.infer_shapes(skeleton(self._model), strict_mode=False)
                _declared(inferred.graph, self._ranks)
            except Exception:  # noqa: BLE001 - inference is best effort; unknown rank means refuse
                pass
        return self._ranks.get(name)
