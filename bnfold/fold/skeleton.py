"""Light copies of a model: its structure without the weights.

``shell`` keeps the header and the main graph's nodes and signatures; ``skeleton`` adds initializers with
their dims and dtypes but no large data, enough for onnx shape inference on a model of any size. Lending
weights to onnxruntime and rank inference both start from these.
"""

from __future__ import annotations

import onnx

from bnfold.fold.graph import subgraphs

_SKELETON_DATA_LIMIT = 1024  # bytes: smaller tensors keep their data (shape tensors for Reshape etc.)


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
