"""inspect agrees with optimize site by site (sample models, corpus), and names, producers, channels, reasons."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import models
from bnfold import inspect, optimize
from bnfold.errors import ModelLoadError, UsageError
from bnfold.fold.driver import graph_indexes
from bnfold.reasons import Reason
from tests.builders import GraphBuilder

BN = "BatchNormalization"


def conv_bn_model(seed: int = 0, c: int = 4) -> onnx.ModelProto:
    """x -> Conv -> BN -> Relu: one BatchNormalization that conv_bn folds."""
    b = GraphBuilder(seed=seed)
    x = b.input("x", ["N", 3, 8, 8])
    y = b.bn(b.conv(x, c, name="conv"), name="bn")
    b.output(b.node("Relu", [y], name="relu"), shape=["N", c, 6, 6])
    return b.build()


def _remaining_batchnorms(model: onnx.ModelProto) -> Counter:
    """(graph label, node name) of every BatchNormalization still in *model*, subgraphs included."""
    return Counter((g.label, node.name or node.output[0]) for g in graph_indexes(model)
                   for node in g.graph.node if node.op_type == BN)


def assert_agrees_with_optimize(model: onnx.ModelProto, **optimize_options) -> None:
    report = inspect(model)
    result = optimize(model, **optimize_options)
    applied, refused = result.report.applied, result.report.refused
    folded = {(a.graph, a.node) for a in applied if a.op_type == BN}
    reasons = {(s.graph, s.node): s.reason for s in refused if s.op_type == BN}
    for site in report.batchnorms:
        key = (site.graph, site.name)
        assert site.foldable == (key in folded), key
        assert site.reason == reasons.get(key), key
        assert (site.rule is None) == (not site.foldable)
    # Independent of both reports: the BatchNormalizations optimize left are exactly those inspect says stay.
    assert _remaining_batchnorms(result.model) == Counter((s.graph, s.name) for s in report.batchnorms
                                                          if not s.foldable)
    assert report.totals.batchnorms == result.report.before.batchnorms
    assert report.totals.foldable == result.report.before.batchnorms - result.report.after.batchnorms
    assert {(s.graph, s.name) for s in report.affine if s.foldable} == {(a.graph, a.node) for a in applied
                                                                         if a.op_type != BN}
    assert {(s.graph, s.name): s.reason for s in report.affine if not s.foldable} == {
        (s.graph, s.node): s.reason for s in refused if s.op_type != BN}


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_inspect_agrees_with_verified_optimize_on_sample_models(name):
    assert_agrees_with_optimize(models.build(name))


def test_densenet_reports_what_stays_and_why():
    report = inspect(models.build("densenet_block"))
    assert report.totals.refused > 0 and report.totals.foldable > 0
    assert sum(report.totals.by_reason.values()) == report.totals.refused
    assert {s.producer_op for s in report.batchnorms if not s.foldable} <= {"Concat", "MaxPool", "AveragePool"}
    # after a Concat of a pooled tensor and Conv outputs, concat_bn names the branch in the way (issue 12)
    for site in report.batchnorms:
        if not site.foldable:
            expected = "branch_not_foldable" if site.producer_op == "Concat" else "no_foldable_neighbour"
            assert site.reason.value == expected, site


@pytest.mark.corpus
def test_inspect_agrees_with_optimize_on_the_corpus(corpus_dir):
    paths = sorted(corpus_dir.glob("*.onnx"))
    assert paths, f"no .onnx files in {corpus_dir}"
    for path in paths:
        model = onnx.load(path)
        assert_agrees_with_optimize(model, verify=False)


def test_every_field_of_a_folded_and_a_kept_batchnorm():
    b = GraphBuilder(seed=1)
    x = b.input("x", ["N", 3, 8, 8])
    kept = b.bn(x, name="bn_in")
    relu = b.node("Relu", [kept], name="relu")
    b.channels[relu] = 3
    y = b.bn(b.conv(relu, 5, name="conv"), name="bn_conv")
    b.output(y, shape=None)
    report = inspect(b.build())
    first, second = report.batchnorms
    assert (first.name, first.graph, first.producer_op, first.channels) == ("bn_in", "main", None, 3)
    assert (first.foldable, first.rule, first.reason) == (False, None, Reason.NO_FOLDABLE_NEIGHBOUR)
    assert first.sentence == Reason.NO_FOLDABLE_NEIGHBOUR.sentence and "Relu" in first.detail
    assert (second.name, second.producer_op, second.channels) == ("bn_conv", "Conv", 5)
    assert (second.foldable, second.rule, second.reason) == (True, "conv_bn", None)
    assert "conv" in second.sentence
    assert report.totals.by_reason == {"no_foldable_neighbour": 1}


def test_unnamed_batchnorm_is_named_by_its_output_like_optimize_names_it():
    model = conv_bn_model()
    bn = next(n for n in model.graph.node if n.op_type == BN)
    bn.name = ""
    (site,) = inspect(model).batchnorms
    assert site.name == bn.output[0]
    assert optimize(model, verify=False).report.applied[0].node == site.name


def test_subgraph_batchnorm_has_the_subgraph_label_and_an_outer_scope_producer():
    rng = np.random.default_rng(3)
    params = [numpy_helper.from_array(v.astype(np.float32), n) for v, n in zip(
        (rng.uniform(0.5, 1.5, 3), rng.standard_normal(3), rng.standard_normal(3), rng.uniform(0.5, 2, 3)),
        ("g", "b", "m", "v"), strict=True)]
    branch = helper.make_graph([helper.make_node(BN, ["r", "g", "b", "m", "v"], ["z"], name="inner_bn")], "then",
                               [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], params)
    other = helper.make_graph([helper.make_node("Identity", ["r"], ["z2"])], "else", [],
                              [helper.make_tensor_value_info("z2", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch, else_branch=other)]
    graph = helper.make_graph(nodes, "main", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
                                              helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (site,) = inspect(model).batchnorms
    assert (site.name, site.graph, site.producer_op, site.channels) == ("inner_bn", "main/if.then_branch", "Relu", 3)
    assert site.reason is Reason.NO_FOLDABLE_NEIGHBOUR
    assert_agrees_with_optimize(model, verify=False)


def test_channels_from_constant_nodes_and_overridable_initializers():
    b = GraphBuilder(seed=2)
    x = b.input("x", ["N", 3, 8, 8])
    conv = b.conv(x, 4, name="conv")
    names = [b.constant(v) for v in b.bn_params(4)]
    y = b.node(BN, [conv, *names], name="bn_const")
    b.channels[y] = 4
    z = b.bn(b.conv(y, 6, name="conv2"), overridable=True, name="bn_input")
    b.output(z, shape=None)
    by_name = {s.name: s for s in inspect(b.build()).batchnorms}
    assert (by_name["bn_const"].channels, by_name["bn_const"].foldable) == (4, True)
    assert (by_name["bn_input"].channels, by_name["bn_input"].reason) == (6, Reason.OVERRIDABLE_INITIALIZER)


def test_rule_selection_is_honoured_and_unknown_rules_refused():
    model = conv_bn_model()
    (site,) = inspect(model, skip_rules=["conv_bn"]).batchnorms
    assert (site.foldable, site.reason) == (False, Reason.RULE_DISABLED)
    assert inspect(model, rules=["conv_bn"]).rules == ("conv_bn",)
    with pytest.raises(UsageError, match="unknown rule"):
        inspect(model, rules=["no_such_rule"])


def test_affine_sites_fold_or_say_why():
    b = GraphBuilder(seed=4)
    x = b.input("x", ["N", 3, 8, 8])
    scaled = b.node("Mul", [b.conv(x, 4, name="conv"), b.init(np.full((4, 1, 1), 1.5, np.float32))], name="mul")
    shifted = b.node("Add", [scaled, b.init(np.arange(4, dtype=np.float32))], name="add_last_axis")
    b.output(b.node("Add", [shifted, x], name="add_vars"), shape=None)
    report = inspect(b.build())
    mul, add = report.affine
    assert (mul.name, mul.op_type, mul.producer_op, mul.foldable, mul.rule) == ("mul", "Mul", "Conv", True,
                                                                                "affine_chain")
    assert (add.name, add.producer_op, add.foldable, add.reason) == ("add_last_axis", "Mul", False,
                                                                      Reason.NOT_PER_CHANNEL)
    assert (report.totals.affine_foldable, report.totals.affine_refused) == (1, 1)


def test_path_and_proto_give_the_same_report_and_the_model_is_untouched(tmp_path):
    model = conv_bn_model()
    before = model.SerializeToString()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    from_proto, from_path = inspect(model), inspect(path)
    assert model.SerializeToString() == before
    assert (from_proto.model, from_path.model) == (None, str(path))
    assert from_proto.batchnorms == from_path.batchnorms and from_proto.totals == from_path.totals


def test_json_has_the_documented_keys_and_null_reason_when_foldable():
    data = json.loads(inspect(conv_bn_model()).to_json())
    assert list(data)[:5] == ["batchnorms", "affine", "totals", "schema_version", "model"]
    (site,) = data["batchnorms"]
    assert list(site) == ["name", "graph", "producer_op", "channels", "foldable", "rule", "reason", "sentence",
                          "detail"]
    assert site["reason"] is None and site["foldable"] is True and site["rule"] == "conv_bn"
    assert {"batchnorms", "foldable", "refused", "by_reason", "affine_foldable"} <= set(data["totals"])
    assert data["schema_version"] >= 1


def test_unreadable_path_raises_the_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        inspect(tmp_path / "missing.onnx")


def test_inspect_an_external_data_model_reads_channels_from_declared_shapes(tmp_path):
    """A path is inspected from its structure: external weights are read only by the fold itself."""
    path = tmp_path / "m.onnx"
    onnx.save_model(models.build("resnet18"), path, save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    report = inspect(path)
    assert report.totals.batchnorms == 20 and report.totals.foldable == 20
    assert all(site.channels and site.channels > 0 for site in report.batchnorms)
