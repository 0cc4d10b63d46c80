"""Tensors a lazily loaded model left in their external data files: read one on demand, copy one on save.

A model over 2 GB is almost all weights, and a fold replaces only some of them. Loading every payload just
to write most of them back unchanged holds the whole model in memory, and the folded copies on top of it
(protobuf keeps replaced bytes until the message is freed). A lazy model keeps its initializers as references
into the source folder instead: folding reads only the tensors it looks at, one at a time, and saving copies
the untouched ones from file to file in small chunks. Every access repeats the loading checks (location
inside the folder, file long enough), so a data file that was swapped or cut short since loading is refused
rather than half-read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from onnx import TensorProto, numpy_helper

from bnfold.io.external_data import ExternalRef, check_ref, read_range, shrank, unreadable

_CHUNK = 1 << 22  # bytes per read while copying a payload between data files

# Data types whose little-endian raw bytes numpy reads directly; the rest go through onnx's decoder.
_PLAIN_DTYPES: dict[int, str] = {
    TensorProto.FLOAT: "<f4", TensorProto.DOUBLE: "<f8", TensorProto.FLOAT16: "<f2", TensorProto.INT8: "i1",
    TensorProto.INT16: "<i2", TensorProto.INT32: "<i4", TensorProto.INT64: "<i8", TensorProto.UINT8: "u1",
    TensorProto.UINT16: "<u2", TensorProto.UINT32: "<u4", TensorProto.UINT64: "<u8", TensorProto.BOOL: "?",
    TensorProto.COMPLEX64: "<c8", TensorProto.COMPLEX128: "<c16",
}


class DataFolder:
    """The folder a lazy model's external data locations are relative to: its source model's folder."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._root = os.path.realpath(folder)

    def locate(self, tensor: TensorProto) -> ExternalRef:
        """The tensor's checked byte range: inside the folder, in a file long enough to hold it."""
        return check_ref(f"tensor {tensor.name!r}", tensor, self._root, require_file=True)

    def read(self, tensor: TensorProto) -> bytes:
        """The tensor's payload, read from its data file (only the declared range)."""
        return self.read_ref(self.locate(tensor))

    def read_ref(self, ref: ExternalRef) -> bytes:
        """The checked range *ref* (from :meth:`locate`), read from its data file."""
        with _open(ref) as handle:
            return read_range(handle, ref)

    def array(self, tensor: TensorProto) -> np.ndarray:
        """The tensor's value, as ``numpy_helper.to_array`` would give it once loaded (read-only)."""
        data = self.read(tensor)
        dtype = _PLAIN_DTYPES.get(tensor.data_type)
        if dtype is not None:
            return np.frombuffer(data, dtype=dtype).reshape(tuple(tensor.dims))
        inline = TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims, raw_data=data)
        return numpy_helper.to_array(inline)

    def copy(self, ref: ExternalRef, out: BinaryIO) -> None:
        """Append the checked range ``ref`` to ``out``, one chunk at a time (never the whole payload)."""
        remaining = ref.length or 0
        buffer = memoryview(bytearray(max(1, min(_CHUNK, remaining))))
        with _open(ref) as handle:
            handle.seek(ref.offset)
            while remaining:
                got = _read_into(handle, ref, buffer[:min(remaining, len(buffer))])
                out.write(buffer[:got])  # a write error stays an OSError: the caller's output problem
                remaining -= got


def _open(ref: ExternalRef) -> BinaryIO:
    try:
        return open(ref.path, "rb")  # noqa: SIM115 - every caller closes it with a with-block
    except OSError as exc:
        raise unreadable(ref, exc) from None


def _read_into(handle: BinaryIO, ref: ExternalRef, view: memoryview) -> int:
    try:
        got = handle.readinto(view)  # type: ignore[attr-defined]  # open(..., 'rb') is a BufferedReader
    except OSError as exc:
        raise unreadable(ref, exc) from None
    if not got:
        raise shrank(ref)
    return got
