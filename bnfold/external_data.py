"""Tensors stored outside the ``.onnx`` file: finding them, refusing unsafe locations, reading and writing them.

A model file names its external data with a free-form ``location`` string. Trusting it would let a crafted
model read any file the user can (``/etc/passwd``, ``../../secrets``), so every location is checked -- and
every data file sized -- before a single byte of tensor data is read. Reading touches only the declared byte
ranges, one tensor at a time, so memory stays close to the size of the model itself.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import BinaryIO

import onnx
from onnx import TensorProto

from bnfold.errors import ModelLoadError, UnsafeExternalDataError

EXTERNAL = TensorProto.EXTERNAL
_PAYLOAD_FIELDS = frozenset(
    {"raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data",
     "external_data", "data_location"}
)
_ALIGNMENT = 64  # payload offsets in written data files; lets readers map tensors without copying

# Bits per element, by data type name (names absent from older onnx releases are skipped).
_BITS_BY_NAME = {
    "FLOAT": 32, "UINT8": 8, "INT8": 8, "UINT16": 16, "INT16": 16, "INT32": 32, "INT64": 64, "BOOL": 8,
    "FLOAT16": 16, "DOUBLE": 64, "UINT32": 32, "UINT64": 64, "COMPLEX64": 64, "COMPLEX128": 128,
    "BFLOAT16": 16, "FLOAT8E4M3FN": 8, "FLOAT8E4M3FNUZ": 8, "FLOAT8E5M2": 8, "FLOAT8E5M2FNUZ": 8,
    "FLOAT8E8M0": 8, "UINT4": 4, "INT4": 4, "FLOAT4E2M1": 4, "UINT2": 2, "INT2": 2,
}
_BITS = {getattr(TensorProto, n): b for n, b in _BITS_BY_NAME.items() if hasattr(TensorProto, n)}

# Typed-field tensors that can be turned into little-endian raw bytes: data type -> (field, numpy dtype).
_TYPED_AS_RAW = {
    TensorProto.FLOAT: ("float_data", "<f4"), TensorProto.COMPLEX64: ("float_data", "<f4"),
    TensorProto.DOUBLE: ("double_data", "<f8"), TensorProto.COMPLEX128: ("double_data", "<f8"),
    TensorProto.INT64: ("int64_data", "<i8"), TensorProto.UINT64: ("uint64_data", "<u8"),
    TensorProto.UINT32: ("uint64_data", "<u4"), TensorProto.INT32: ("int32_data", "<i4"),
    TensorProto.INT16: ("int32_data", "<i2"), TensorProto.INT8: ("int32_data", "i1"),
    TensorProto.UINT16: ("int32_data", "<u2"), TensorProto.UINT8: ("int32_data", "u1"),
    TensorProto.BOOL: ("int32_data", "u1"), TensorProto.FLOAT16: ("int32_data", "<u2"),
    TensorProto.BFLOAT16: ("int32_data", "<u2"),
}
# Upper bound of the encoded bytes per element of each typed field (varints take up to 10).
_TYPED_WIDTH = {"float_data": 4, "double_data": 8, "int32_data": 10, "int64_data": 10, "uint64_data": 10}


@dataclass(frozen=True)
class ExternalRef:
    """One externally stored tensor whose location passed the safety checks."""

    label: str
    tensor: TensorProto
    location: str
    path: Path
    offset: int
    length: int | None  # None when the data file was not examined (require_files=False)


# ---------------------------------------------------------------- walking every tensor

def iter_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """Yield ``(label, tensor)`` for every tensor: initializers, sparse parts, node attributes (Constant and
    any other), subgraphs of If/Loop/Scan at any depth, functions and training graphs."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)
    for info in model.training_info:
        yield from _graph_tensors(info.initialization)
        yield from _graph_tensors(info.algorithm)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, TensorProto]]:
    for tensor in graph.initializer:
        yield f"initializer {tensor.name!r}", tensor
    for sparse in graph.sparse_initializer:
        yield f"sparse initializer {sparse.values.name!r} (values)", sparse.values
        yield f"sparse initializer {sparse.values.name!r} (indices)", sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[tuple[str, TensorProto]]:
    for attr in node.attribute:
        label = f"attribute {attr.name!r} of {node.op_type} node {node.name or '(unnamed)'!r}"
        if attr.HasField("t"):
            yield label, attr.t
        for tensor in attr.tensors:
            yield label, tensor
        sparse_tensors = chain([attr.sparse_tensor] if attr.HasField("sparse_tensor") else [], attr.sparse_tensors)
        for sparse in sparse_tensors:
            yield f"{label} (sparse values)", sparse.values
            yield f"{label} (sparse indices)", sparse.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for graph in attr.graphs:
            yield from _graph_tensors(graph)


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether any tensor of this in-memory proto still points at external data (i.e. was not loaded)."""
    return any(tensor.data_location == EXTERNAL for _, tensor in iter_tensors(model))


# ---------------------------------------------------------------- sizes without serialising

def element_count(tensor: TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count


def expected_nbytes(tensor: TensorProto) -> int | None:
    """Bytes the tensor's raw data must have, from its shape and type; None for strings and unknown types."""
    bits = _BITS.get(tensor.data_type)
    return None if bits is None else (element_count(tensor) * bits + 7) // 8


def payload_estimate(tensor: TensorProto) -> int:
    """Bytes the tensor's data takes inside a serialised model, without copying the data out of the proto."""
    if tensor.data_location == EXTERNAL:
        return sum(len(entry.key) + len(entry.value) + 4 for entry in tensor.external_data)
    if tensor.HasField("raw_data"):
        nbytes = expected_nbytes(tensor)
        return len(tensor.raw_data) if nbytes is None else nbytes
    typed = sum(len(getattr(tensor, field)) * width for field, width in _TYPED_WIDTH.items())
    return typed + sum(len(s) + 2 for s in tensor.string_data)


# ---------------------------------------------------------------- checking locations before reading

def check_external_data(model: onnx.ModelProto, folder: Path, *, require_files: bool) -> list[ExternalRef]:
    """Validate every external reference against ``folder``; nothing is read.

    Locations must be relative, free of ``..`` and, after following symbolic links, inside ``folder``. With
    ``require_files`` the data files must also exist and hold ``offset + length`` bytes.
    """
    root = os.path.realpath(folder)
    refs = []
    for label, tensor in iter_tensors(model):
        if tensor.data_location != EXTERNAL:
            continue
        location, offset, length = _external_entries(label, tensor)
        path = _resolve_inside(root, location, label)
        if require_files:
            length = _check_extent(label, tensor, location, path, offset, length)
        refs.append(ExternalRef(label, tensor, location, path, offset, length))
    return refs


def _external_entries(label: str, tensor: TensorProto) -> tuple[str, int, int | None]:
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    if not location:
        raise UnsafeExternalDataError(f"{label} is stored externally but names no data file")
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError as exc:
        raise UnsafeExternalDataError(f"{label}: malformed external data offset/length ({exc})") from None
    if offset < 0 or (length is not None and length < 0):
        raise UnsafeExternalDataError(f"{label}: negative external data offset/length")
    return location, offset, length


def _resolve_inside(root: str, location: str, label: str) -> Path:
    where = f"{label}: external data location {location!r}"
    if "\0" in location:
        raise UnsafeExternalDataError(f"{where} contains a NUL byte")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
        raise UnsafeExternalDataError(f"{where} is an absolute path; only files inside the model's folder are read")
    if ".." in re.split(r"[\\/]", location):
        raise UnsafeExternalDataError(f"{where} climbs out of the model's folder with '..'")
    real = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, real]) != root:
        raise UnsafeExternalDataError(
            f"{where} resolves through a symbolic link to {real}, outside the model's folder {root}"
        )
    return Path(real)


def _check_extent(label: str, tensor: TensorProto, location: str, path: Path, offset: int,
                  length: int | None) -> int:
    """Return the byte count to read, after making sure the file holds it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UnsafeExternalDataError(
            f"{label}: external data file {location!r} does not exist next to the model ({path.parent})"
        ) from None
    except OSError as exc:
        raise UnsafeExternalDataError(f"{label}: cannot open external data file {location!r}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeExternalDataError(f"{label}: external data location {location!r} is not a regular file")
    needed = expected_nbytes(tensor)
    if length is not None and needed is not None and length != needed:
        raise UnsafeExternalDataError(
            f"{label}: declares {length} bytes of external data but its shape and type need {needed}"
        )
    length = length if length is not None else needed if needed is not None else max(info.st_size - offset, 0)
    if info.st_size < offset + length:
        raise UnsafeExternalDataError(
            f"{label}: external data file {location!r} has {info.st_size} bytes, too short for bytes "
            f"{offset}..{offset + length}"
        )
    return length


# ---------------------------------------------------------------- reading

def read_external_data(refs: list[ExternalRef]) -> None:
    """Read each checked reference's byte range into its tensor, making the tensor self-contained."""
    handles: dict[Path, BinaryIO] = {}
    try:
        for ref in refs:
            if ref.length is None:
                raise ValueError("read_external_data needs references checked with require_files=True")
            handle = handles.get(ref.path)
            if handle is None:
                handle = handles[ref.path] = open(ref.path, "rb")  # noqa: SIM115 - closed below, kept across tensors
            handle.seek(ref.offset)
            data = handle.read(ref.length)
            if len(data) != ref.length:
                raise UnsafeExternalDataError(f"{ref.label}: external data file {ref.location!r} shrank while read")
            ref.tensor.raw_data = data
            ref.tensor.ClearField("external_data")
            ref.tensor.ClearField("data_location")
    except OSError as exc:
        raise ModelLoadError(f"cannot read external data file {exc.filename}: {exc.strerror}") from None
    finally:
        for handle in handles.values():
            handle.close()


# ---------------------------------------------------------------- writing

class _PayloadWriter:
    """Moves tensor payloads above a threshold into one data file and hands back payload-free stand-ins."""

    def __init__(self, out: BinaryIO, location: str, threshold: int) -> None:
        self.out, self.location, self.threshold = out, location, threshold
        self.position = 0
        self.count = 0

    def tensor(self, tensor: TensorProto) -> TensorProto:
        if tensor.data_location == EXTERNAL or payload_estimate(tensor) <= self.threshold:
            return tensor
        data = _payload_bytes(tensor)
        if data is None:  # strings and exotic typed encodings stay inline
            return tensor
        padding = -self.position % _ALIGNMENT
        self.out.write(b"\0" * padding + data)
        offset, self.position = self.position + padding, self.position + padding + len(data)
        self.count += 1
        stand_in = TensorProto()
        copy_fields(tensor, stand_in, skip=_PAYLOAD_FIELDS)
        stand_in.data_location = EXTERNAL
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(len(data)))):
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


def copy_fields(source, target, *, skip: frozenset[str] = frozenset()) -> None:
    """Copy every set field of one protobuf message onto another of the same type, except ``skip``."""
    for descriptor, value in source.ListFields():
        if descriptor.name in skip:
            continue
        repeated = getattr(descriptor, "is_repeated", None)
        if repeated is None:  # protobuf < 5 spells it with labels
            repeated = descriptor.label == descriptor.LABEL_REPEATED
        if repeated:
            getattr(target, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


def externalize(model: onnx.ModelProto, out: BinaryIO, location: str, threshold: int) -> tuple[onnx.ModelProto, int]:
    """Write payloads over ``threshold`` bytes to ``out`` and return (model that refers to them, how many).

    The caller's model is left untouched, and no payload is copied into the returned proto, so memory
    stays near one model plus one tensor. Covers initializers and tensor attributes in every (sub)graph.
    """
    writer = _PayloadWriter(out, location, threshold)
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


def holds_tensors(attr: onnx.AttributeProto) -> bool:
    """Whether an attribute carries tensors or subgraphs (whose size protobuf would have to serialise to tell)."""
    return attr.HasField("t") or attr.HasField("g") or len(attr.tensors) > 0 or len(attr.graphs) > 0
