"""float16 variants with float32 inputs and outputs, laid out the way onnxconverter-common writes them.

``convert_float_to_float16(model, keep_io_types=True)`` (onnxconverter-common 1.16) stores every float initializer
as float16 (values clamped into float16's range), computes every node in float16, and leaves the graph inputs and
outputs float32: a ``Cast(to=FLOAT16)`` after each float input and a ``Cast(to=FLOAT)`` before each float output.
This is what makes such models hard for a verifier: the outputs it compares are float32, the arithmetic behind
them is float16. Written here from that description (numpy and onnx.helper only), not from the converter's code.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

# The converter's defaults: magnitudes below MIN_POSITIVE become +-MIN_POSITIVE, above MAX_FINITE are clipped.
MIN_POSITIVE = 1e-7
MAX_FINITE = 1e4


def _to_float16(tensor: onnx.TensorProto) -> None:
    """Rewrite a float32 initializer in place as float16 raw data."""
    value = onnx.numpy_helper.to_array(tensor).astype(np.float64)
    tiny = (value != 0) & (np.abs(value) < MIN_POSITIVE)
    value = np.where(tiny, np.copysign(MIN_POSITIVE, value), np.clip(value, -MAX_FINITE, MAX_FINITE))
    half = value.astype("<f2")
    dims = list(tensor.dims)
    tensor.ClearField("float_data")
    tensor.ClearField("raw_data")
    tensor.data_type = TensorProto.FLOAT16
    del tensor.dims[:]
    tensor.dims.extend(dims)
    tensor.raw_data = half.tobytes()


def _rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _rename_writes(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new


def to_float16_keep_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16-compute copy of float32 ``model`` whose graph inputs and outputs stay float32 (Cast at both ends)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for tensor in graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            _to_float16(tensor)
    for value in graph.value_info:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    head, tail = [], []
    for i, value in enumerate(v for v in graph.input if v.type.tensor_type.elem_type == TensorProto.FLOAT):
        cast_out = f"graph_input_cast_{i}"
        _rename_reads(graph, value.name, cast_out)
        head.append(helper.make_node("Cast", [value.name], [cast_out], name=f"graph_input_cast{i}",
                                     to=TensorProto.FLOAT16))
    for i, value in enumerate(v for v in graph.output if v.type.tensor_type.elem_type == TensorProto.FLOAT):
        cast_in = f"graph_output_cast_{i}"
        _rename_writes(graph, value.name, cast_in)
        _rename_reads(graph, value.name, cast_in)
        tail.append(helper.make_node("Cast", [cast_in], [value.name], name=f"graph_output_cast{i}",
                                     to=TensorProto.FLOAT))
    nodes = [*head, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.name += "_fp16io"
    out.doc_string += " (float16 compute, float32 I/O as convert_float_to_float16(keep_io_types=True) writes it)"
    return out
