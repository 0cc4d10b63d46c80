"""What optimize must keep: interface, names, model metadata, functions, valid value_info; what it must
drop: dead tensors and their value_info; and running it twice changes nothing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, op_count

FLOAT = TensorProto.FLOAT


def _function() -> onnx.FunctionProto:
    """A model-local function com.example.Halve(x) = x * 0.5."""
    nodes = [helper.make_node("Constant", [], ["half"], value=numpy_helper.from_array(np.array(0.5, np.float32))),
             helper.make_node("Mul", ["x", "half"], ["y"])]
    return helper.make_function("com.example", "Halve", ["x"], ["y"], nodes,
                                [helper.make_opsetid("", 17)])


def _rich_model() -> onnx.ModelProto:
    b = GraphBuilder(seed=0)
    x = b.input("x", ["N", 3, 8, 8])
    conv1 = b.conv(x, 4, name="conv1")
    bn1 = b.bn(conv1, name="bn1")
    relu = b.node("Relu", [bn1], name="relu")
    halved = b.node("Halve", [relu], name="halve", domain="com.example")
    b.channels[halved] = 4
    conv2 = b.conv(halved, 5, 1, name="conv2")
    y = b.bn(conv2, name="bn2")
    b.output(y, shape=["N", 5, 6, 6])
    b.output(relu, shape=["N", 4, 6, 6])
    b.init(np.arange(3, dtype=np.float32), "unused_weight")
    b.constant(np.ones(2, np.float32), "dead_constant")
    kept = b.constant(np.full(2, 7.0, np.float32), "constant_output")
    b.output(kept, shape=[2])
    model = b.build()
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    model.functions.append(_function())
    model.producer_name, model.producer_version, model.domain = "tests", "1.2.3", "org.example"
    model.model_version, model.doc_string, model.graph.doc_string = 7, "model doc", "graph doc"
    helper.set_model_props(model, {"author": "bnfold tests", "license": "MIT"})
    model.graph.value_info.extend([
        helper.make_tensor_value_info(conv1, FLOAT, ["N", 4, 6, 6]),  # removed by the fold
        helper.make_tensor_value_info(bn1, FLOAT, ["N", 4, 6, 6]),  # now produced by conv1: still valid
        helper.make_tensor_value_info(halved, FLOAT, ["N", 4, 6, 6]),
        helper.make_tensor_value_info("dead_constant", FLOAT, [2]),  # its node is dead
    ])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def folded() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    model = _rich_model()
    result = optimize(model, verify=False)
    assert [a.node for a in result.report.applied] == ["bn1", "bn2"]
    return model, result.model


def test_interface_is_unchanged(folded):
    model, out = folded
    assert list(out.graph.input) == list(model.graph.input)
    assert list(out.graph.output) == list(model.graph.output)


def test_node_names_and_untouched_nodes_are_kept(folded):
    model, out = folded
    assert [n.name for n in out.graph.node] == ["conv1", "relu", "halve", "conv2", ""]
    original = {n.name: n for n in model.graph.node}
    assert out.graph.node[1] == original["relu"] and out.graph.node[2] == original["halve"]
    assert out.graph.node[4] == next(n for n in model.graph.node if n.output[0] == "constant_output")


def test_model_level_fields_are_kept(folded):
    model, out = folded
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        assert getattr(out, field) == getattr(model, field), field
    assert list(out.opset_import) == list(model.opset_import)
    original = list(model.metadata_props)
    assert list(out.metadata_props)[:len(original)] == original
    assert all(p.key.startswith("bnfold.") for p in out.metadata_props[len(original):])  # provenance only
    assert list(out.functions) == list(model.functions)
    assert out.graph.doc_string == model.graph.doc_string and out.graph.name == model.graph.name


def test_value_info_kept_when_valid_and_dropped_when_dead(folded):
    model, out = folded
    assert list(out.graph.value_info) == list(model.graph.value_info[1:3])


def test_dead_initializers_and_constants_are_removed(folded):
    _, out = folded
    names = {t.name for t in out.graph.initializer}
    assert "unused_weight" not in names
    assert [n.output[0] for n in out.graph.node if n.op_type == "Constant"] == ["constant_output"]
    read = {i for n in out.graph.node for i in n.input}
    assert names <= read


def test_result_passes_the_full_checker_and_runs(folded):
    model, out = folded
    onnx.checker.check_model(out, full_check=True)
    assert_equivalent(model, out)


def test_second_run_changes_nothing_byte_for_byte(folded):
    _, out = folded
    again = optimize(out, verify=False)
    assert again.report.applied == ()
    assert again.model.SerializeToString() == out.SerializeToString()


def test_custom_domain_op_in_the_middle_is_untouched():
    """com.example ops are opaque, even one called Conv: folds happen around them, never through them."""
    b = GraphBuilder(seed=1)
    x = b.input("x", ["N", 3, 8, 8])
    y1 = b.bn(b.conv(x, 4, name="conv1"), name="bn1")
    custom = b.node("Scramble", [y1], name="scramble", domain="com.example", mode="fast")
    fake_conv = b.node("Conv", [custom, b.init(b.weight([4, 4, 1, 1]))], name="fake_conv", domain="com.example")
    b.channels[fake_conv] = 4
    y2 = b.bn(fake_conv, name="bn_after_fake")
    y3 = b.bn(y2, name="bn_before_fake")
    out_fake = b.node("Conv", [y3, b.init(b.weight([4, 4, 1, 1]))], name="fake_conv2", domain="com.example")
    b.channels[out_fake] = 4
    b.output(b.bn(b.conv(out_fake, 4, 1, name="conv2"), name="bn2"), shape=["N", 4, 8, 8])
    model = b.build()
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.checker.check_model(model)
    result = optimize(model, verify=False)
    assert [a.node for a in result.report.applied] == ["bn1", "bn2"]
    refused = {s.node: s.reason for s in result.report.refused}
    assert refused == {"bn_after_fake": Reason.NO_FOLDABLE_NEIGHBOUR, "bn_before_fake": Reason.NO_FOLDABLE_NEIGHBOUR}
    original = {n.name: n for n in model.graph.node}
    for name in ("scramble", "fake_conv", "fake_conv2", "bn_after_fake", "bn_before_fake"):
        assert next(n for n in result.model.graph.node if n.name == name) == original[name]
    assert op_count(result.model, "BatchNormalization") == 2
    assert list(result.model.opset_import) == list(model.opset_import)
    onnx.checker.check_model(result.model)


def test_metadata_off_keeps_metadata_props_exactly():
    model = _rich_model()
    out = optimize(model, verify=False, metadata=False).model
    assert list(out.metadata_props) == list(model.metadata_props)


def test_model_without_sites_is_returned_byte_identical():
    b = GraphBuilder(seed=2)
    b.output(b.node("Relu", [b.conv(b.input("x", ["N", 3, 8, 8]), 4)]), shape=None)
    model = b.build()
    result = optimize(model, verify=False)
    assert result.report.applied == () and result.report.refused == ()
    assert result.model.SerializeToString() == model.SerializeToString()
