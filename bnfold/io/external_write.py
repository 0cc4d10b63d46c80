"""Writing a model's tensor payloads to one external data file beside it, and the payload-free model to go with it.

Payloads go one tensor at a time, at 64-byte aligned offsets, and the caller's model is never modified: each
written tensor is replaced by a stand-in in a new proto, so memory stays near one model plus one tensor.
Tensors a lazy model still keeps in its source data files (see ``bnfold.io.lazy_data``) are copied from file to
file in chunks, never loaded whole; the output may replace those very files, because the caller writes the
new data file under a temporary name and renames it only after everything has been copied.
"""

from __future__ import annotations

from typing import BinaryIO

import onnx
from onnx import TensorProto

from bnfold.io.external_data import EXTERNAL, holds_tensors, payload_estimate
from bnfold.io.lazy_data import DataFolder
from bnfold.io.stream_write import copy_fields

_PAYLOAD_FIELDS = frozenset(
    {"raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data",
     "external_data", "data_location"}
)
_ALIGNMENT = 64  # payload offsets in written data files; lets readers map tensors without copying

# Typed-field tensors that can be turned into little-endian raw bytes: data type -> (field, numpy dtype).
_TYPED_AS_RAW: dict[int, tuple[str, str]] = {
    TensorProto.FLOAT: ("float_data", "<f4"), TensorProto.COMPLEX64: ("float_data", "<f4"),
    TensorProto.DOUBLE: ("double_data", "<f8"), TensorProto.COMPLEX128: ("double_data", "<f8"),
    TensorProto.INT64: ("int64_data", "<i8"), TensorProto.UINT64: ("uint64_data", "<u8"),
    TensorProto.UINT32: ("uint64_data", "<u4"), TensorProto.INT32: ("int32_data", "<i4"),
    TensorProto.INT16: ("int32_data", "<i2"), TensorProto.INT8: ("int32_data", "i1"),
    TensorProto.UINT16: ("int32_data", "<u2"), TensorProto.UINT8: ("int32_data", "u1"),
    TensorProto.BOOL: ("int32_data", "u1"), TensorProto.FLOAT16: ("int32_data", "<u2"),
    TensorProto.BFLOAT16: ("int32_data", "<u2"),
}


class _PayloadWriter:
    """Moves tensor payloads above a threshold into one data file and hands back payload-free stand-ins."""

    def __init__(self, out: BinaryIO, location: str, threshold: int, source: DataFolder | None) -> None:
        self.out, self.location, self.threshold, self.source = out, location, threshold, source
        self.position = 0
        self.count = 0

    def tensor(self, tensor: TensorProto) -> TensorProto:
        if tensor.data_location == EXTERNAL:
            return self._external(tensor)
        if payload_estimate(tensor) <= self.threshold:
            return tensor
        data = _payload_bytes(tensor)
        if data is None:  # strings and exotic typed encodings stay inline
            return tensor
        offset = self._pad()
        self.out.write(data)
        return self._stand_in(tensor, offset, len(data))

    def _external(self, tensor: TensorProto) -> TensorProto:
        """A tensor still in a source data file: copied across, or brought inline when small (as if loaded)."""
        if self.source is None:
            raise ValueError(f"tensor {tensor.name!r} is still external and no source folder was given")
        ref = self.source.locate(tensor)
        assert ref.length is not None  # locate() checks the range against the data file
        if ref.length <= self.threshold:
            inline = TensorProto()
            copy_fields(tensor, inline, skip=_PAYLOAD_FIELDS)
            inline.raw_data = self.source.read_ref(ref)
            return inline
        offset = self._pad()
        self.source.copy(ref, self.out)
        return self._stand_in(tensor, offset, ref.length)

    def _pad(self) -> int:
        """Align the next payload; returns its offset."""
        padding = -self.position % _ALIGNMENT
        self.out.write(b"\0" * padding)
        self.position += padding
        return self.position

    def _stand_in(self, tensor: TensorProto, offset: int, length: int) -> TensorProto:
        self.position += length
        self.count += 1
        stand_in = TensorProto()
        copy_fields(tensor, stand_in, skip=_PAYLOAD_FIELDS)
        stand_in.data_location = EXTERNAL
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(length))):
            entry = stand_in.external_data.add()
            entry.key, entry.value = key, value
        return stand_in


def _payload_bytes(tensor: TensorProto) -> bytes | None:
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    field_dtype = _TYPED_AS_RAW.get(tensor.data_type)
    if field_dtype is None:
        return None
    import numpy as np

    field, dtype = field_dtype
    return np.asarray(getattr(tensor, field)).astype(dtype).tobytes()


def externalize(model: onnx.ModelProto, out: BinaryIO, location: str, threshold: int,
                source: DataFolder | None = None) -> tuple[onnx.ModelProto, int]:
    """Write payloads over ``threshold`` bytes to ``out`` and return (model that refers to them, how many).

    The caller's model is left untouched, and no payload is copied into the returned proto, so memory
    stays near one model plus one tensor. Covers initializers and tensor attributes in every (sub)graph.
    ``source``: where tensors still stored externally (a lazy model's) are read from; required if any are.
    """
    writer = _PayloadWriter(out, location, threshold, source)
    shell = onnx.ModelProto()
    copy_fields(model, shell, skip=frozenset({"graph"}))
    shell.graph.CopyFrom(_graph_stand_in(model.graph, writer))
    return shell, writer.count


def _graph_stand_in(graph: onnx.GraphProto, writer: _PayloadWriter) -> onnx.GraphProto:
    result = onnx.GraphProto()
    copy_fields(graph, result, skip=frozenset({"node", "initializer"}))
    result.initializer.extend(writer.tensor(tensor) for tensor in graph.initializer)
    result.node.extend(_node_stand_in(node, writer) for node in graph.node)
    return result


def _node_stand_in(node: onnx.NodeProto, writer: _PayloadWriter) -> onnx.NodeProto:
    if not any(holds_tensors(attr) for attr in node.attribute):
        return node
    result = onnx.NodeProto()
    copy_fields(node, result, skip=frozenset({"attribute"}))
    for attr in node.attribute:
        if not holds_tensors(attr):
            result.attribute.append(attr)
            continue
        stand_in = result.attribute.add()
        copy_fields(attr, stand_in, skip=frozenset({"t", "tensors", "g", "graphs"}))
        if attr.HasField("t"):
            stand_in.t.CopyFrom(writer.tensor(attr.t))
        stand_in.tensors.extend(writer.tensor(tensor) for tensor in attr.tensors)
        if attr.HasField("g"):
            stand_in.g.CopyFrom(_graph_stand_in(attr.g, writer))
        stand_in.graphs.extend(_graph_stand_in(graph, writer) for graph in attr.graphs)
    return result

