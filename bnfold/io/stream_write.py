"""Write a ModelProto to a file piece by piece, never holding its whole serialisation in memory.

``onnx.save`` serialises the model into one bytes object (as large as the model) while the model itself
is still in memory: for a 100 MB model that is 100 MB more at the peak. Here the model's fields other
than the graph are serialised as usual (they are small), then the graph field is written element by
element (each node, each initializer serialised on its own), with its length patched in afterwards.
Protobuf reads fields in any order and varints padded to a fixed width, so the file parses to the very
same message; it is not byte-for-byte what ``SerializeToString`` gives (the graph comes last).
"""

from __future__ import annotations

from typing import BinaryIO

import onnx
from google.protobuf.descriptor import FieldDescriptor

_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_LENGTH_WIDTH = 5  # bytes of the patched graph length: enough for any protobuf (< 2 GiB)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _padded_varint(value: int) -> bytes:
    """*value* as a varint of exactly ``_LENGTH_WIDTH`` bytes (continuation bits set on all but the last)."""
    return bytes(((value >> (7 * i)) & 0x7F) | (0x80 if i < _LENGTH_WIDTH - 1 else 0) for i in range(_LENGTH_WIDTH))


def _length_delimited_tag(number: int) -> bytes:
    return _varint((number << 3) | 2)


def _is_repeated(descriptor: FieldDescriptor) -> bool:
    repeated = getattr(descriptor, "is_repeated", None)
    if repeated is None:  # protobuf before 6 has no is_repeated: it spells it with labels
        repeated = descriptor.label == descriptor.LABEL_REPEATED
    return repeated


def copy_fields(source, target, *, skip: frozenset[str] = frozenset()) -> None:
    """Copy every set field of one protobuf message onto another of the same type, except ``skip``."""
    for descriptor, value in source.ListFields():
        if descriptor.name in skip:
            continue
        if _is_repeated(descriptor):
            getattr(target, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


def _header(model: onnx.ModelProto) -> bytes:
    """Every field of *model* but the graph, serialised."""
    head = onnx.ModelProto()
    copy_fields(model, head, skip=frozenset({"graph"}))
    return head.SerializeToString()


def _graph_pieces(graph: onnx.GraphProto):
    """The graph's serialisation: each element of its repeated message fields (node, initializer, ...) on
    its own, then its few other fields (name, doc_string) together."""
    streamed = [f for f in graph.DESCRIPTOR.fields if _is_repeated(f) and f.type == FieldDescriptor.TYPE_MESSAGE]
    for field in streamed:
        tag = _length_delimited_tag(field.number)
        for element in getattr(graph, field.name):
            data = element.SerializeToString()
            yield tag + _varint(len(data))
            yield data
    rest = onnx.GraphProto()
    copy_fields(graph, rest, skip=frozenset(f.name for f in streamed))
    yield rest.SerializeToString()


def write_model(model: onnx.ModelProto, handle: BinaryIO) -> None:
    """Write *model* to a seekable binary *handle*: a file that parses to a message equal to *model*."""
    handle.write(_header(model))
    handle.write(_length_delimited_tag(_GRAPH_FIELD))
    length_at = handle.tell()
    handle.write(bytes(_LENGTH_WIDTH))
    length = 0
    for piece in _graph_pieces(model.graph):
        handle.write(piece)
        length += len(piece)
    end = handle.tell()
    handle.seek(length_at)
    handle.write(_padded_varint(length))
    handle.seek(end)
