"""Tensors stored outside the ``.onnx`` file: finding them, refusing unsafe locations, reading them.

A model file names its external data with a free-form ``location`` string. Trusting it would let a crafted
model read any file the user can (``/etc/passwd``, ``../../secrets``), so every location is checked -- and
every data file sized -- before a single byte of tensor data is read. Reading touches only the declared byte
ranges, one tensor at a time, so memory stays close to the size of the model itself. Writing data files is
``bnfold.io.external_write``; reading single tensors on demand (lazy models) is ``bnfold.io.lazy_data``.
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
_INITIALIZER = "initializer"  # label prefix of graph initializers (sparse ones start with "sparse")

# Bits per element, by data type name (names absent from older onnx releases are skipped).
_BITS_BY_NAME = {
    "FLOAT": 32, "UINT8": 8, "INT8": 8, "UINT16": 16, "INT16": 16, "INT32": 32, "INT64": 64, "BOOL": 8,
    "FLOAT16": 16, "DOUBLE": 64, "UINT32": 32, "UINT64": 64, "COMPLEX64": 64, "COMPLEX128": 128,
    "BFLOAT16": 16, "FLOAT8E4M3FN": 8, "FLOAT8E4M3FNUZ": 8, "FLOAT8E5M2": 8, "FLOAT8E5M2FNUZ": 8,
    "FLOAT8E8M0": 8, "UINT4": 4, "INT4": 4, "FLOAT4E2M1": 4, "UINT2": 2, "INT2": 2,
}
_BITS = {getattr(TensorProto, n): b for n, b in _BITS_BY_NAME.items() if hasattr(TensorProto, n)}

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

    @property
    def initializer(self) -> bool:
        """Whether the tensor is a graph initializer (of the main graph or a subgraph)."""
        return self.label.startswith(_INITIALIZER + " ")


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
        yield f"{_INITIALIZER} {tensor.name!r}", tensor
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


def holds_tensors(attr: onnx.AttributeProto) -> bool:
    """Whether an attribute carries tensors or subgraphs (whose size protobuf would have to serialise to tell)."""
    return attr.HasField("t") or attr.HasField("g") or len(attr.tensors) > 0 or len(attr.graphs) > 0


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
    return [check_ref(label, tensor, root, require_file=require_files)
            for label, tensor in iter_tensors(model) if tensor.data_location == EXTERNAL]


def check_ref(label: str, tensor: TensorProto, root: str, *, require_file: bool) -> ExternalRef:
    """Validate one external tensor against ``root`` (a real path, see ``check_external_data``)."""
    location, offset, length = _external_entries(label, tensor)
    path = _resolve_inside(root, location, label)
    if require_file:
        length = _check_extent(label, tensor, location, path, offset, length)
    return ExternalRef(label, tensor, location, path, offset, length)


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
            ref.tensor.raw_data = read_range(handle, ref)
            ref.tensor.ClearField("external_data")
            ref.tensor.ClearField("data_location")
    except OSError as exc:
        raise ModelLoadError(f"cannot read external data file {exc.filename}: {exc.strerror}") from None
    finally:
        for handle in handles.values():
            handle.close()


def read_range(handle: BinaryIO, ref: ExternalRef) -> bytes:
    """The checked byte range *ref* of the open data file *handle*; a file that got shorter since it was
    checked is refused, a read error names the tensor and the file."""
    try:
        handle.seek(ref.offset)
        data = handle.read(-1 if ref.length is None else ref.length)
    except OSError as exc:
        raise unreadable(ref, exc) from None
    if len(data) != ref.length:
        raise shrank(ref)
    return data


def unreadable(ref: ExternalRef, exc: OSError) -> ModelLoadError:
    return ModelLoadError(f"{ref.label}: cannot read external data file {ref.location!r}: {exc.strerror}")


def shrank(ref: ExternalRef) -> UnsafeExternalDataError:
    return UnsafeExternalDataError(f"{ref.label}: external data file {ref.location!r} shrank while read")
