"""Conv -> BN inside If branches, Loop and Scan bodies, with weights in the subgraph or the outer graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold import optimize
from tests.builders import GraphBuilder, run

FLOAT, BOOL, INT64 = TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64
PLACES = ["inner", "outer", "mixed"]  # where the conv weights and BN parameters live


class Scopes:
    """Initializer lists for the main graph and one subgraph, and a seeded generator for their values."""

    def __init__(self, place: str, seed: int = 0) -> None:
        self.place, self.rng = place, np.random.default_rng(seed)
        self.outer: list[onnx.TensorProto] = []
        self.inner: list[onnx.TensorProto] = []

    def add(self, name: str, value: np.ndarray, kind: str) -> str:
        outer = self.place == "outer" or (self.place == "mixed" and kind == "weight")
        (self.outer if outer else self.inner).append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv_bn(self, x: str, prefix: str, c_in: int, c_out: int, **conv_attrs) -> tuple[list, str]:
        """Nodes computing BN(Conv(x)); the BN output is ``<prefix>_y``."""
        w = self.add(f"{prefix}_w", self.rng.standard_normal((c_out, c_in, 3, 3)) * 0.3, "weight")
        b = self.add(f"{prefix}_b", self.rng.standard_normal(c_out) * 0.1, "weight")
        params = [self.add(f"{prefix}_gamma", self.rng.uniform(0.5, 1.5, c_out), "param"),
                  self.add(f"{prefix}_beta", self.rng.standard_normal(c_out), "param"),
                  self.add(f"{prefix}_mean", self.rng.standard_normal(c_out), "param"),
                  self.add(f"{prefix}_var", self.rng.uniform(0.1, 2.0, c_out), "param")]
        conv = helper.make_node("Conv", [x, w, b], [f"{prefix}_c"], name=f"{prefix}_conv", **conv_attrs)
        bn = helper.make_node("BatchNormalization", [f"{prefix}_c", *params], [f"{prefix}_y"], name=f"{prefix}_bn")
        return [conv, bn], f"{prefix}_y"


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "main", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _value(name: str, elem=FLOAT, shape=("d0", "d1", "d2", "d3")) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _assert_same_outputs(original: onnx.ModelProto, folded: onnx.ModelProto, feeds: dict) -> None:
    for a, b in zip(run(original, feeds), run(folded, feeds), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * max(np.abs(a).max(), 1e-12))


def _folded(model: onnx.ModelProto, n_folds: int, graph_part: str) -> onnx.ModelProto:
    result = optimize(model, verify=False)
    assert len(result.report.applied) == n_folds and result.report.refused == ()
    assert all(graph_part in a.graph and a.graph != "main" for a in result.report.applied)
    assert result.report.after.batchnorms == 0
    onnx.checker.check_model(result.model, full_check=True)
    return result.model


def _all_initializer_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names |= _all_initializer_names(attr.g)
    return names


def _if_model(place: str) -> onnx.ModelProto:
    s = Scopes(place)
    then_nodes, then_y = s.conv_bn("x", "then", 3, 4)
    else_nodes, else_y = s.conv_bn("x", "else", 3, 4, strides=[1, 1])
    inner_then, inner_else = s.inner[:len(s.inner) // 2], s.inner[len(s.inner) // 2:]
    then_g = helper.make_graph(then_nodes, "then", [], [_value(then_y)], inner_then)
    else_g = helper.make_graph(else_nodes, "else", [], [_value(else_y)], inner_else)
    node = helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)
    return _model([node], [_value("x", FLOAT, [1, 3, 6, 6]), _value("cond", BOOL, [])], [_value("y")], s.outer)


@pytest.mark.parametrize("place", PLACES)
def test_if_branches_fold(place):
    model = _if_model(place)
    out = _folded(model, 2, "if.")
    labels = {a.graph.rsplit(".", 1)[-1] for a in optimize(model, verify=False).report.applied}
    assert labels == {"then_branch", "else_branch"}
    if place != "inner":  # outer-scope weights only the branches read are gone once the branches fold
        assert not ({t.name for t in out.graph.initializer} & {t.name for t in model.graph.initializer})
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32)
    for cond in (True, False):
        _assert_same_outputs(model, out, {"x": x, "cond": np.array(cond)})


def _loop_model(place: str) -> onnx.ModelProto:
    s = Scopes(place, seed=2)
    nodes, y = s.conv_bn("x_in", "body", 4, 4, pads=[1, 1, 1, 1])
    nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    body = helper.make_graph(nodes, "body", [_value("i", INT64, []), _value("cond_in", BOOL, []), _value("x_in")],
                             [_value("cond_out", BOOL, []), _value(y)], s.inner)
    inits = [*s.outer, numpy_helper.from_array(np.array(3, np.int64), "trip"),
             numpy_helper.from_array(np.array(True), "go")]
    node = helper.make_node("Loop", ["trip", "go", "x"], ["y"], name="loop", body=body)
    return _model([node], [_value("x", FLOAT, [1, 4, 5, 5])], [_value("y")], inits)


@pytest.mark.parametrize("place", PLACES)
def test_loop_body_folds(place):
    model = _loop_model(place)
    out = _folded(model, 1, "loop.body")
    assert [n.op_type for n in out.graph.node[0].attribute[0].g.node] == ["Conv", "Identity"]
    x = np.random.default_rng(3).standard_normal((1, 4, 5, 5)).astype(np.float32)
    _assert_same_outputs(model, out, {"x": x})


def _scan_model(place: str) -> onnx.ModelProto:
    s = Scopes(place, seed=4)
    nodes, y = s.conv_bn("x_t", "step", 3, 2)
    body = helper.make_graph(nodes, "step", [_value("x_t", FLOAT, [1, 3, 5, 5])], [_value(y)], s.inner)
    node = helper.make_node("Scan", ["xs"], ["ys"], name="scan", body=body, num_scan_inputs=1)
    return _model([node], [_value("xs", FLOAT, [4, 1, 3, 5, 5])], [_value("ys", FLOAT, ["t", 1, 2, 3, 3])], s.outer)


@pytest.mark.parametrize("place", PLACES)
def test_scan_body_folds(place):
    model = _scan_model(place)
    out = _folded(model, 1, "scan.body")
    xs = np.random.default_rng(5).standard_normal((4, 1, 3, 5, 5)).astype(np.float32)
    _assert_same_outputs(model, out, {"xs": xs})


@pytest.mark.parametrize("build", [_if_model, _loop_model, _scan_model], ids=["if", "loop", "scan"])
def test_second_run_on_folded_subgraphs_changes_nothing(build):
    out = optimize(build("mixed"), verify=False).model
    again = optimize(out, verify=False)
    assert again.report.applied == ()
    assert again.model.SerializeToString() == out.SerializeToString()


@pytest.mark.parametrize("build", [_loop_model, _scan_model], ids=["loop", "scan"])
def test_default_optimize_verifies_subgraph_folds(build):
    result = optimize(build("outer"))
    assert result.report.verification.status == "passed" and len(result.report.applied) == 1


def test_outer_constant_nodes_are_folded_and_removed():
    """Weights from Constant nodes in the main graph, read only by a branch: folded, then dropped."""
    model = _if_model("outer")
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    nodes = constants + list(model.graph.node)
    del model.graph.initializer[:], model.graph.node[:]
    model.graph.node.extend(nodes)
    out = _folded(model, 2, "if.")
    assert [n.op_type for n in out.graph.node] == ["If"]
    x = np.random.default_rng(12).standard_normal((1, 3, 6, 6)).astype(np.float32)
    for cond in (True, False):
        _assert_same_outputs(model, out, {"x": x, "cond": np.array(cond)})


def test_outer_weight_also_read_by_main_graph_is_cloned():
    """W feeds a plain main-graph Conv and, from outer scope, a Conv -> BN in a branch: the branch gets a copy."""
    s = Scopes("outer", seed=6)
    nodes, y = s.conv_bn("x", "then", 3, 4)
    then_g = helper.make_graph(nodes, "then", [], [_value(y)])
    else_g = helper.make_graph([helper.make_node("Conv", ["x", "then_w"], ["e"])], "else", [], [_value("e")])
    main_conv = helper.make_node("Conv", ["x", "then_w", "then_b"], ["z"], name="main_conv")
    node = helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)
    model = _model([main_conv, node], [_value("x", FLOAT, [1, 3, 6, 6]), _value("cond", BOOL, [])],
                   [_value("y"), _value("z")], s.outer)
    before = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    out = _folded(model, 1, "then_branch")
    after = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    for name in ("then_w", "then_b"):
        np.testing.assert_array_equal(after[name], before[name])
    assert list(out.graph.node[0].input) == ["x", "then_w", "then_b"]
    folded_conv = next(a.g for a in out.graph.node[1].attribute if a.name == "then_branch").node[0]
    assert folded_conv.input[1] not in ("then_w", "then_b") and folded_conv.input[2] not in ("then_w", "then_b")
    x = np.random.default_rng(7).standard_normal((1, 3, 6, 6)).astype(np.float32)
    for cond in (True, False):
        _assert_same_outputs(model, out, {"x": x, "cond": np.array(cond)})


def test_main_graph_fold_clones_weight_a_subgraph_reads():
    """The reverse: main Conv -> BN whose weight a branch also reads from outer scope."""
    b = GraphBuilder(seed=8)
    x = b.input("x", [1, 3, 6, 6])
    b.input("cond", [], np.bool_)
    w = b.init(b.weight([4, 3, 3, 3]), "w_shared")
    branch = helper.make_graph([helper.make_node("Conv", ["x", w], ["t"])], "b", [], [_value("t")])
    b.nodes.append(helper.make_node("If", ["cond"], ["branch_out"], name="if", then_branch=branch,
                                    else_branch=branch))
    b.output("branch_out")
    b.output(b.bn(b.node("Conv", [x, w], name="conv"), 4))
    model = b.build()
    result = optimize(model, verify=False)
    assert [a.graph for a in result.report.applied] == ["main"]
    original = {t.name: t for t in result.model.graph.initializer}["w_shared"]
    np.testing.assert_array_equal(numpy_helper.to_array(original), numpy_helper.to_array(model.graph.initializer[0]))
    assert result.model.graph.node[-1].input[1] != "w_shared"  # the folded conv reads its own copy
    assert "w_shared" in _all_initializer_names(result.model.graph)
    x_val = np.random.default_rng(9).standard_normal((1, 3, 6, 6)).astype(np.float32)
    _assert_same_outputs(model, result.model, {"x": x_val, "cond": np.array(True)})


def test_nested_if_reads_weights_two_scopes_up():
    s = Scopes("outer", seed=10)
    nodes, y = s.conv_bn("x", "deep", 3, 4)
    inner_if = helper.make_node("If", ["cond"], ["mid"], name="inner_if",
                                then_branch=helper.make_graph(nodes, "deep", [], [_value(y)]),
                                else_branch=helper.make_graph([helper.make_node("Conv", ["x", "deep_w"], ["e"])],
                                                              "e", [], [_value("e")]))
    middle = helper.make_graph([inner_if], "middle", [], [_value("mid")])
    other = helper.make_graph([helper.make_node("Conv", ["x", "deep_w"], ["o"])], "other", [], [_value("o")])
    outer_if = helper.make_node("If", ["cond"], ["y"], name="outer_if", then_branch=middle, else_branch=other)
    model = _model([outer_if], [_value("x", FLOAT, [1, 3, 6, 6]), _value("cond", BOOL, [])], [_value("y")],
                   s.outer)
    out = _folded(model, 1, "inner_if.then_branch")
    assert "deep_w" in {t.name for t in out.graph.initializer}  # still read by the two plain convs
    x = np.random.default_rng(11).standard_normal((1, 3, 6, 6)).astype(np.float32)
    for cond in (True, False):
        _assert_same_outputs(model, out, {"x": x, "cond": np.array(cond)})
