"""The piece-by-piece writer: files parse to the same message, run in onnxruntime, pass the checker."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import helper

import models
from bnfold.errors import OutputWriteError
from bnfold.io import model_file as bio
from bnfold.io.stream_write import _padded_varint, _varint, write_model
from tests.builders import feeds_for, run


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**21, 2**31 - 1])
def test_varints_decode_to_their_value(value):
    for encoded in (_varint(value), _padded_varint(value)):
        decoded = sum((byte & 0x7F) << (7 * i) for i, byte in enumerate(encoded))
        assert decoded == value and all(b & 0x80 for b in encoded[:-1]) and not encoded[-1] & 0x80


def test_streamed_model_parses_to_the_same_message_and_runs(tmp_path):
    model = models.build("resnet18")
    model.metadata_props.add(key="k", value="v")
    model.doc_string = "doc"
    model.graph.doc_string = "graph doc"
    buffer = io.BytesIO()
    write_model(model, buffer)
    again = onnx.load_model_from_string(buffer.getvalue())
    assert again == model
    path = tmp_path / "m.onnx"
    path.write_bytes(buffer.getvalue())
    onnx.checker.check_model(str(path), full_check=True)
    feeds = feeds_for(model)
    for a, b in zip(run(model, feeds), run(str(path), feeds), strict=True):
        np.testing.assert_array_equal(a, b)


def test_model_with_functions_and_subgraphs_round_trips():
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "then", [],
                             [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    node = helper.make_node("If", ["c"], ["out"], then_branch=then, else_branch=then)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
                                            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [2])])
    function = helper.make_function("local", "f", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                                    [helper.make_opsetid("", 17)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[function])
    buffer = io.BytesIO()
    write_model(model, buffer)
    assert onnx.load_model_from_string(buffer.getvalue()) == model


def test_save_model_streams_when_no_bytes_are_given(tmp_path):
    model = models.build("mobilenetv2")
    path = tmp_path / "m.onnx"
    bio.save_model(model, path)
    assert onnx.load(str(path)) == model


def test_a_single_file_over_two_gigabytes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(bio, "model_bytes_size", lambda model: bio.PROTOBUF_LIMIT)
    with pytest.raises(OutputWriteError, match="over 2 GB"):
        bio.save_model(models.build("resnet18"), tmp_path / "m.onnx", external_data=False)
    assert list(tmp_path.iterdir()) == []


def test_repeated_fields_are_recognised_without_is_repeated():
    """protobuf before 6 has no FieldDescriptor.is_repeated; the label spells it there (3: repeated)."""
    from types import SimpleNamespace

    from bnfold.io.stream_write import _is_repeated

    assert _is_repeated(onnx.GraphProto.DESCRIPTOR.fields_by_name["node"])
    assert not _is_repeated(onnx.GraphProto.DESCRIPTOR.fields_by_name["name"])
    assert _is_repeated(SimpleNamespace(label=3, LABEL_REPEATED=3))
    assert not _is_repeated(SimpleNamespace(label=1, LABEL_REPEATED=3))


def _with_unknown_fields(model: onnx.ModelProto) -> onnx.ModelProto:
    """*model* as a newer onnx might write it: unknown field 99 on the model and on its graph, of several
    wire types (length-delimited on the model; varint, fixed32 and fixed64 on the graph)."""
    graph = model.graph.SerializeToString()
    graph += _varint(99 << 3 | 0) + _varint(300) + _varint(98 << 3 | 5) + b"\x01\x02\x03\x04"
    graph += _varint(97 << 3 | 1) + bytes(range(8))
    head = onnx.ModelProto()
    head.CopyFrom(model)
    head.ClearField("graph")
    data = head.SerializeToString() + _varint(7 << 3 | 2) + _varint(len(graph)) + graph
    data += _varint(99 << 3 | 2) + _varint(5) + b"later"
    return onnx.load_model_from_string(data)


def test_unknown_fields_at_model_and_graph_level_are_kept():
    """Regression (issue 13): the writer dropped them (a field 99: 1 unknown field before, 0 after)."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    model = _with_unknown_fields(models.build("resnet18"))
    assert len(UnknownFieldSet(model)) == 1 and len(UnknownFieldSet(model.graph)) == 3
    buffer = io.BytesIO()
    write_model(model, buffer)
    again = onnx.load_model_from_string(buffer.getvalue())
    assert len(UnknownFieldSet(again)) == 1 and len(UnknownFieldSet(again.graph)) == 3
    assert again == model
    assert again.SerializeToString(deterministic=True) == model.SerializeToString(deterministic=True)
