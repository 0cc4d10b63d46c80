"""Malformed tensors, named before anything reads them: unknown data types, impossible dims, data of the wrong size.

Protobuf parses such tensors happily; numpy or onnxruntime then fail far from the cause (or a 2^40-element
dims tries to allocate terabytes). Every tensor of the model is checked from its declared fields alone, in
time linear in the number of tensors; external payloads are sized by ``bnfold.io.external_data``.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from bnfold.io.external_data import EXTERNAL, expected_nbytes, iter_tensors

__all__ = ["MalformedTensor", "check_tensors"]

_DEFINED_TYPES = frozenset(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
_MAX_ELEMENTS = 2**62  # no real tensor comes near; more would overflow 64-bit byte counts

_WIDE = {TensorProto.COMPLEX64, TensorProto.COMPLEX128}  # two typed values per element
_PACKED = {getattr(TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
           if hasattr(TensorProto, name)}
_TYPED_FIELD: dict[int, str] = {
    TensorProto.FLOAT: "float_data", TensorProto.COMPLEX64: "float_data", TensorProto.DOUBLE: "double_data",
    TensorProto.COMPLEX128: "double_data", TensorProto.INT64: "int64_data", TensorProto.UINT64: "uint64_data",
    TensorProto.UINT32: "uint64_data", TensorProto.STRING: "string_data",
}
_FIELDS = ("float_data", "double_data", "int32_data", "int64_data", "uint64_data", "string_data")


class MalformedTensor(ValueError):
    """What is wrong with one tensor (the caller adds which model)."""


def check_tensors(model: onnx.ModelProto) -> None:
    """Raise MalformedTensor for the first tensor whose type, dims or data cannot be what it declares."""
    for label, tensor in iter_tensors(model):
        _check_tensor(label, tensor)


def _check_tensor(label: str, tensor: TensorProto) -> None:
    if tensor.data_type not in _DEFINED_TYPES:
        raise MalformedTensor(f"{label} has data type {tensor.data_type}, which ONNX does not define")
    count = 1
    for dim in tensor.dims:
        if dim < 0:
            raise MalformedTensor(f"{label} has a negative dimension in dims {list(tensor.dims)}")
        count *= dim
    if count > _MAX_ELEMENTS:
        raise MalformedTensor(f"{label} declares dims {list(tensor.dims)} ({count} elements): impossibly large")
    if tensor.data_location == EXTERNAL:
        return  # its length is checked against the dims when the data file is examined
    if tensor.HasField("raw_data"):
        _check_raw(label, tensor, count)
        return
    if tensor.data_type in _PACKED:
        return  # several elements per typed value; onnx's own packing rules apply
    field = _TYPED_FIELD.get(tensor.data_type, "int32_data")
    needed = 2 * count if tensor.data_type in _WIDE else count
    present = [name for name in _FIELDS if len(getattr(tensor, name))]
    if count and not present:
        raise MalformedTensor(f"{label} declares {count} elements (dims {list(tensor.dims)}) but holds no data")
    if present and (present != [field] or len(getattr(tensor, field)) != needed):
        held = ", ".join(f"{len(getattr(tensor, name))} in {name}" for name in present)
        raise MalformedTensor(f"{label} of type {_type_name(tensor)} with dims {list(tensor.dims)} needs {needed} "
                              f"values in {field}, but holds {held}")


def _check_raw(label: str, tensor: TensorProto, count: int) -> None:
    needed = expected_nbytes(tensor)
    if needed is None:
        raise MalformedTensor(f"{label} of type {_type_name(tensor)} cannot keep its data in raw_data")
    held = len(tensor.raw_data)
    if held != needed:
        raise MalformedTensor(f"{label} of type {_type_name(tensor)} with dims {list(tensor.dims)} needs "
                              f"{needed} bytes of raw data, but holds {held}")


def _type_name(tensor: TensorProto) -> str:
    return TensorProto.DataType.Name(tensor.data_type)
