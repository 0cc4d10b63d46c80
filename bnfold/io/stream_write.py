"""Write a ModelProto to a file piece by piece, never holding its whole serialisation in memory.

``onnx.save`` serialises the model into one bytes object (as large as the model) while the model itself
is still in memory: for a 100 MB model that is 100 MB more at the peak. Here the model's fields other
than the graph are serialised as usual (they are small), then the graph field is written element by
element (each node, each initializer serialised on its own), with its length patched in afterwards.
Protobuf reads fields in any order and varints padded to a fixed width, so the file parses to the very
same message; it is not byte-for-byte what ``SerializeToString`` gives (the graph comes last).

Fields this onnx version does not know (written by a newer one) are kept: nested messages carry theirs in
their own serialisation, and the model's and the graph's own unknown fields are re-encoded from
protobuf's ``UnknownFieldSet``. Where protobuf lacks that API (before 4.22) and such fields are present,
the model is written with one ``SerializeToString`` instead.
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


def _unknown_fields(message) -> list | None:
    """The unknown fields of *message* itself; None where this protobuf cannot list them."""
    try:
        from google.protobuf.unknown_fields import UnknownFieldSet
    except ImportError:  # protobuf < 4.22
        return None
    return list(UnknownFieldSet(message))


def _encode_unknown(fields) -> bytes:
    """Unknown fields back to their wire form (tag, then the value as its wire type stores it)."""
    out = bytearray()
    for field in fields:
        number, wire, data = field.field_number, field.wire_type, field.data
        out += _varint((number << 3) | wire)
        if wire == 0:
            out += _varint(data)
        elif wire == 1:
            out += int(data).to_bytes(8, "little")
        elif wire == 2:
            out += _varint(len(data)) + bytes(data)
        elif wire == 3:  # a group: its fields, then the end-group tag
            out += _encode_unknown(data) + _varint((number << 3) | 4)
        elif wire == 5:
            out += int(data).to_bytes(4, "little")
    return bytes(out)


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
    return head.SerializeToString() + _encode_unknown(_unknown_fields(model) or ())


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
    yield rest.SerializeToString() + _encode_unknown(_unknown_fields(graph) or ())


def write_model(model: onnx.ModelProto, handle: BinaryIO) -> None:
    """Write *model* to a seekable binary *handle*: a file that parses to a message equal to *model*."""
    if _unknown_fields(model) is None and _has_unknown(model):
        handle.write(model.SerializeToString())  # old protobuf: the only way to keep them
        return
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


def _has_unknown(model: onnx.ModelProto) -> bool:
    """Whether the model or its graph holds unknown fields, on a protobuf without ``UnknownFieldSet``."""
    for message in (model, model.graph):
        lister = getattr(message, "UnknownFields", None)
        try:
            if lister is None or len(lister()):
                return True
        except NotImplementedError:
            return True
    return False
