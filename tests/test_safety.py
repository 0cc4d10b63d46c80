"""The safety promises: shared weights are cloned, new names never collide, overridable initializers stay
overridable, and folds that would change a visible value or write inf are refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from bnfold import optimize
from bnfold.fold.graph import all_names
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, feeds_for, op_count, run


def _arrays(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def _all_finite(graph: onnx.GraphProto) -> bool:
    tensors = list(graph.initializer) + [a.t for n in graph.node for a in n.attribute if a.name == "value"]
    return all(np.isfinite(numpy_helper.to_array(t).astype(np.float64)).all() for t in tensors)


def test_input_model_is_never_modified():
    b = GraphBuilder()
    b.output(b.bn(b.conv(b.input("x", ["N", 3, 6, 6]), 4)), shape=None)
    model = b.build()
    before = model.SerializeToString()
    assert optimize(model, verify=False).report.applied
    assert model.SerializeToString() == before


def test_weight_shared_with_a_conv_without_bn_is_cloned():
    b = GraphBuilder(seed=1)
    x = b.input("x", ["N", 3, 6, 6])
    w, bias = b.init(b.weight([4, 3, 3, 3]), "w"), b.init(np.full(4, 0.5, np.float32), "bias")
    b.output(b.bn(b.node("Conv", [x, w, bias], name="conv_a"), 4), shape=None)
    b.output(b.node("Conv", [x, w, bias], name="conv_b"), shape=None)
    model = b.build()
    out = optimize(model, verify=False).model
    assert op_count(out, "BatchNormalization") == 0
    conv_a, conv_b = (n for n in out.graph.node if n.op_type == "Conv")
    assert list(conv_b.input) == [x, "w", "bias"]
    assert conv_a.input[1] not in ("w", "bias") and conv_a.input[2] not in ("w", "bias")
    original, after = _arrays(model.graph), _arrays(out.graph)
    for name in ("w", "bias"):
        np.testing.assert_array_equal(after[name], original[name])
    assert_equivalent(model, out)


def test_weight_shared_by_two_folded_convs_gets_two_copies():
    b = GraphBuilder(seed=2)
    x = b.input("x", ["N", 3, 6, 6])
    w = b.init(b.weight([3, 3, 1, 1]), "w")
    first = b.bn(b.node("Conv", [x, w], name="conv_a"), 3)
    b.output(b.bn(b.node("Conv", [first, w], name="conv_b"), 3), shape=None)
    model = b.build()
    out = optimize(model, verify=False).model
    assert op_count(out, "BatchNormalization") == 0
    weights = [n.input[1] for n in out.graph.node]
    assert len(set(weights)) == 2  # the first fold cloned w; the second, its only reader left, edits it in place
    assert set(weights) <= set(_arrays(out.graph))
    assert_equivalent(model, out)


def test_constant_node_shared_by_two_convs_is_not_edited():
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 3, 6, 6])
    w = b.constant(b.weight([4, 3, 3, 3]), "w_const")
    b.output(b.bn(b.node("Conv", [x, w], name="conv_a"), 4), shape=None)
    b.output(b.node("Conv", [x, w], name="conv_b"), shape=None)
    model = b.build()
    out = optimize(model, verify=False).model
    (const,) = [n for n in out.graph.node if n.op_type == "Constant"]
    assert const == model.graph.node[0]
    assert_equivalent(model, out)


def _collision_model() -> tuple[onnx.ModelProto, str]:
    """conv1 has no bias and shares its weight, so the fold must invent conv1_weight and conv1_bias --
    names already taken by a main-graph tensor, a subgraph initializer and a subgraph node output."""
    b = GraphBuilder(seed=4)
    x = b.input("x", [1, 3, 6, 6])
    b.input("cond", [], np.bool_)
    w = b.init(b.weight([4, 3, 3, 3]), "w")
    b.output(b.bn(b.node("Conv", [x, w], name="conv1"), 4), shape=[1, 4, 4, 4])
    b.output(b.node("Conv", [x, w], name="conv2"), shape=[1, 4, 4, 4])
    b.nodes.append(helper.make_node("Relu", [x], ["conv1_weight"], name="taken"))
    b.output("conv1_weight", shape=[1, 3, 6, 6])
    taken = numpy_helper.from_array(np.ones([1, 3, 6, 6], np.float32), "conv1_bias")
    then_g = helper.make_graph([helper.make_node("Add", [x, "conv1_bias"], ["conv1_bias_1"], name="conv1_weight_1")],
                               "then", [], [helper.make_tensor_value_info("conv1_bias_1", onnx.TensorProto.FLOAT,
                                                                          [1, 3, 6, 6])], [taken])
    b.nodes.append(helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=then_g, else_branch=then_g))
    b.output("branch", shape=[1, 3, 6, 6])
    return b.build(), "conv1"


def test_new_names_collide_with_nothing_anywhere():
    model, conv_name = _collision_model()
    existing = all_names(model.graph)
    result = optimize(model, verify=False)
    out = result.model
    assert [a.target for a in result.report.applied] == [conv_name]
    conv = next(n for n in out.graph.node if n.name == conv_name)
    new_names = set(conv.input[1:]) - existing
    assert len(new_names) == 2 and all(n.startswith(conv_name) for n in new_names)
    assert {t.name for t in out.graph.initializer} == {"w"} | new_names
    untouched = {n.name: n for n in model.graph.node if n.name != conv_name and n.op_type != "BatchNormalization"}
    assert {n.name: n for n in out.graph.node if n.name in untouched} == untouched
    onnx.checker.check_model(out, full_check=True)
    for cond in (True, False):
        feeds = {**feeds_for(model), "cond": np.array(cond)}
        for a, c in zip(run(model, feeds), run(out, feeds), strict=True):
            np.testing.assert_allclose(c, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_new_name_skips_an_unread_sparse_initializer():
    """Regression: sparse initializers were missing from the taken names, so conv1_bias was reused."""
    b = GraphBuilder(seed=4)
    b.output(b.bn(b.node("Conv", [b.input("x", [1, 3, 6, 6]), b.init(b.weight([4, 3, 3, 3]))], name="conv1"), 4),
             shape=[1, 4, 4, 4])
    model = b.build()
    values = numpy_helper.from_array(np.array([1.0], np.float32), "conv1_bias")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, numpy_helper.from_array(
        np.array([0], np.int64), ""), [4]))
    out = optimize(model, verify=False).model
    assert out.graph.node[0].input[2] not in ("", "conv1_bias")
    onnx.checker.check_model(out, full_check=True)
    assert_equivalent(model, out)


@pytest.mark.parametrize("which", ["bn_params", "conv_weight"])
def test_overridable_initializers_stay_overridable(which):
    b = GraphBuilder(seed=5)
    x = b.input("x", ["N", 3, 6, 6])
    w = b.init(b.weight([4, 3, 3, 3]), "w", overridable=which == "conv_weight")
    y = b.bn(b.node("Conv", [x, w], name="conv"), 4, overridable=which == "bn_params")
    b.output(y, shape=None)
    model = b.build()
    result = optimize(model, verify=False)
    assert result.report.applied == ()
    assert [s.reason for s in result.report.refused] == [Reason.OVERRIDABLE_INITIALIZER]
    out = result.model
    assert [i.name for i in out.graph.input] == [i.name for i in model.graph.input]
    assert {k: v.tobytes() for k, v in _arrays(out.graph).items()} == {
        k: v.tobytes() for k, v in _arrays(model.graph).items()}
    override = out.graph.input[1].name
    value = np.full([d.dim_value for d in out.graph.input[1].type.tensor_type.shape.dim], 0.75, np.float32)
    feeds = {**feeds_for(model), override: value}
    np.testing.assert_array_equal(run(out, feeds)[0], run(model, feeds)[0])


def test_overridable_affine_constant_is_not_folded():
    b = GraphBuilder(seed=5)
    conv = b.conv(b.input("x", ["N", 3, 6, 6]), 4, name="conv")
    b.output(b.node("Mul", [conv, b.init(np.full([4, 1, 1], 2.0, np.float32), "scale", overridable=True)]),
             shape=None)
    model = b.build()
    result = optimize(model, verify=False)
    assert result.report.applied == ()
    assert result.model.SerializeToString() == model.SerializeToString()


def test_conv_output_that_is_a_graph_output_is_refused():
    b = GraphBuilder(seed=6)
    conv = b.conv(b.input("x", ["N", 3, 6, 6]), 4, name="conv")
    b.output(b.bn(conv), shape=None)
    b.output(conv, shape=None)
    model = b.build()
    result = optimize(model, verify=False)
    assert [s.reason for s in result.report.refused] == [Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT]
    assert result.model.SerializeToString() == model.SerializeToString()


def test_training_mode_bn_is_left_alone():
    b = GraphBuilder(opset=15, seed=7)
    b.output(b.bn(b.conv(b.input("x", [2, 3, 6, 6]), 4), training_mode=1), shape=None)
    model = b.build()
    result = optimize(model, verify=False)
    assert [s.reason for s in result.report.refused] == [Reason.TRAINING_MODE]
    assert result.model.SerializeToString() == model.SerializeToString()


def _fp16_model(weight_scale: float, gamma: float, mean: float) -> onnx.ModelProto:
    b = GraphBuilder(seed=8, dtype=np.float16)
    w = (b.rng.uniform(0.5, 1.0, [4, 3, 3, 3]) * weight_scale).astype(np.float16)
    conv = b.node("Conv", [b.input("x", ["N", 3, 6, 6]), b.init(w)])
    params = b.bn_params(4)
    params[0][:], params[2][:], params[3][:] = gamma, mean, 1.0
    b.output(b.bn(conv, 4, params=params), shape=None)
    return b.build()


@pytest.mark.parametrize("weight_scale,gamma,mean,reason", [
    (100.0, 1000.0, 0.0, Reason.FOLD_OVERFLOW),  # weight 1e5 > fp16 max
    (1.0, 1000.0, 100.0, Reason.FOLD_OVERFLOW),  # bias shift -1e5
    (1e-4, 1e-4, 0.0, Reason.FOLD_UNDERFLOW),  # weight 1e-8 < smallest fp16 subnormal
], ids=["weight-overflow", "bias-overflow", "underflow"])
def test_fp16_folds_that_do_not_fit_are_refused(weight_scale, gamma, mean, reason):
    model = _fp16_model(weight_scale, gamma, mean)
    result = optimize(model, verify=False)
    assert [s.reason for s in result.report.refused] == [reason]
    assert result.report.applied == ()
    assert result.model.SerializeToString() == model.SerializeToString()
    assert _all_finite(result.model.graph)


def test_fp16_fold_that_fits_is_applied():
    model = _fp16_model(1.0, 2.0, 0.5)
    result = optimize(model, verify=False)
    assert [a.rule for a in result.report.applied] == ["conv_bn"]
    assert _all_finite(result.model.graph)
    assert_equivalent(model, result.model)


def test_zero_variance_with_zero_epsilon_is_refused():
    b = GraphBuilder(seed=9)
    conv = b.conv(b.input("x", ["N", 3, 6, 6]), 4)
    params = b.bn_params(4)
    params[3][1] = 0.0
    b.output(b.bn(conv, params=params, epsilon=0.0), shape=None)
    model = b.build()
    result = optimize(model, verify=False)
    assert [s.reason for s in result.report.refused] == [Reason.FOLD_OVERFLOW]
    assert _all_finite(result.model.graph)
