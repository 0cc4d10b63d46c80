"""IR >= 4 with weights listed as graph inputs (PyTorch's keep_initializers_as_inputs=True): a caller may
override them, so every rule refuses them as overridable_initializer (that reason, wherever it is the
obstacle); ``freeze_initializers=True`` takes them out of the inputs, folds, and reports what it removed."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import helper

from bnfold import inspect, optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, assert_refused, feeds_for, op_count, run


def _conv_bn(b: GraphBuilder, over: str) -> str:
    x = b.input("x", ["N", 3, 6, 6])
    w = b.init(b.weight([4, 3, 3, 3]), "w", overridable=over == "weight")
    return b.bn(b.node("Conv", [x, w], name="conv"), 4, name="bn", overridable=over == "params")


def _deconv_bn(b: GraphBuilder, over: str) -> str:
    w = b.init(b.weight([4, 3, 3, 3]), "w", overridable=True)
    return b.bn(b.node("ConvTranspose", [b.input("x", ["N", 4, 5, 5]), w], name="deconv"), 3, name="bn")


def _gemm_bn(b: GraphBuilder, over: str) -> str:
    w = b.init(b.weight([5, 4]), "w", overridable=True)
    return b.bn(b.node("Gemm", [b.input("a", ["N", 5]), w], name="gemm"), 4, name="bn")


def _matmul_bn(b: GraphBuilder, over: str) -> str:
    w = b.init(b.weight([5, 4]), "w", overridable=True)
    return b.bn(b.node("MatMul", [b.input("a", ["N", 5]), w], name="mm"), 4, name="bn")


def _matmul_bn_weight_first(b: GraphBuilder, over: str) -> str:
    w = b.init(b.weight([4, 5]), "w", overridable=True)
    return b.bn(b.node("MatMul", [w, b.input("a", ["N", 5, 6])], name="mm"), 4, name="bn")


def _bn_conv(b: GraphBuilder, over: str) -> str:
    z = b.bn(b.input("x", ["N", 4, 6, 6]), name="bn")
    w = b.init(b.weight([5, 4, 1, 1]), "w", overridable=True)
    return b.node("Conv", [z, w], name="conv")


def _affine_constant(b: GraphBuilder, over: str) -> str:
    conv = b.conv(b.input("x", ["N", 3, 6, 6]), 4, name="conv")
    scale = b.init(np.linspace(0.5, 2.0, 4, dtype=np.float32).reshape(4, 1, 1), "scale", overridable=True)
    return b.node("Mul", [conv, scale], name="mul")


def _affine_weight(b: GraphBuilder, over: str) -> str:
    x = b.input("x", ["N", 3, 6, 6])
    conv = b.node("Conv", [x, b.init(b.weight([4, 3, 3, 3]), "w", overridable=True)], name="conv")
    return b.node("Add", [conv, b.init(np.full((4, 1, 1), 0.25, np.float32), "shift")], name="add")


CASES: dict[str, tuple[Callable[[GraphBuilder, str], str], str, str]] = {  # id: (graph, rule, overridable part)
    "conv_bn-weight": (_conv_bn, "conv_bn", "weight"),
    "conv_bn-params": (_conv_bn, "conv_bn", "params"),
    "convtranspose_bn": (_deconv_bn, "convtranspose_bn", "weight"),
    "gemm_bn": (_gemm_bn, "gemm_bn", "weight"),
    "matmul_bn": (_matmul_bn, "matmul_bn", "weight"),
    "matmul_bn-weight-first": (_matmul_bn_weight_first, "matmul_bn", "weight"),
    "bn_conv": (_bn_conv, "bn_conv", "weight"),
    "affine_chain-constant": (_affine_constant, "affine_chain", "constant"),
    "affine_chain-weight": (_affine_weight, "affine_chain", "weight"),
}


def case_model(case: str, ir_version: int = 8) -> onnx.ModelProto:
    build, _, over = CASES[case]
    b = GraphBuilder(seed=11)
    b.output(b.node("Relu", [build(b, over)], name="relu"), shape=None)
    return b.build(ir_version=ir_version)


def initializer_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name in inits]


@pytest.mark.parametrize("case", CASES)
def test_every_rule_refuses_an_overridable_initializer_for_that_reason(case):
    model = case_model(case)
    rule = CASES[case][1]
    if rule == "affine_chain":  # the affine site is no BatchNormalization: assert_refused counts BNs
        result = optimize(model, verify=False)
        assert [(s.reason, s.rule) for s in result.report.refused] == [(Reason.OVERRIDABLE_INITIALIZER, rule)]
        assert not result.report.applied and result.model.graph == model.graph
        assert_equivalent(model, result.model)
        return
    result = assert_refused(model, Reason.OVERRIDABLE_INITIALIZER)
    assert result.report.refused[0].rule == rule


def test_matmul_weight_that_is_an_overridable_input_is_not_reported_as_matmul_layout():
    """Regression (issue 12): MatMul(x, W) with W an initializer also listed as a graph input was refused as
    matmul_layout ('no single constant operand'); the obstacle is that W may be overridden."""
    result = optimize(case_model("matmul_bn"), verify=False)
    (site,) = result.report.refused
    assert site.reason is Reason.OVERRIDABLE_INITIALIZER and site.detail == "w"
    assert Reason.MATMUL_LAYOUT.value not in [why for _, why in site.attempts]


def test_an_add_of_an_input_and_an_overridable_initializer_is_no_site():
    """Only where a foldable producer feeds it is such an Add a refused site; otherwise it is ordinary."""
    b = GraphBuilder()
    x = b.input("x", ["N", 4])
    b.output(b.node("Add", [x, b.init(np.ones(4, np.float32), "bias", overridable=True)]), shape=None)
    result = optimize(b.build(), verify=False)
    assert result.report.refused == () and result.report.applied == ()


# ---- freeze_initializers --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_freezing_takes_them_out_of_the_inputs_and_folds(case):
    model = case_model(case)
    listed = initializer_inputs(model)
    result = optimize(model, freeze_initializers=True)  # verified in onnxruntime against the original
    assert result.report.verification.status == "passed"
    assert result.report.removed_inputs == tuple(listed) and listed
    assert [f.rule for f in result.report.applied][-1] == CASES[case][1] and result.report.refused == ()
    assert initializer_inputs(result.model) == []
    assert [v.name for v in result.model.graph.input] == [v.name for v in model.graph.input if v.name not in listed]
    assert_equivalent(model, result.model)  # the original run with its listed defaults


def test_removed_inputs_are_in_the_json_report():
    result = optimize(case_model("conv_bn-params"), verify=False, freeze_initializers=True)
    data = json.loads(result.report.to_json())
    assert data["removed_inputs"] == list(initializer_inputs(case_model("conv_bn-params")))
    assert len(data["removed_inputs"]) == 4  # gamma, beta, mean, var


def test_freezing_without_such_inputs_changes_nothing_more():
    b = GraphBuilder(seed=2)
    b.output(b.bn(b.conv(b.input("x", ["N", 3, 6, 6]), 4)), shape=None)
    model = b.build()
    plain, frozen = optimize(model, verify=False), optimize(model, verify=False, freeze_initializers=True)
    assert frozen.report.removed_inputs == () and frozen.model.graph == plain.model.graph


def test_freezing_alone_is_a_change_even_when_nothing_folds():
    """Inputs removed but no BN to fold (a BN after an Add): the model differs, so it must be written."""
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 4, 6, 6])
    b.output(b.bn(b.node("Add", [x, x]), 4, name="bn", overridable=True), shape=None)
    model = b.build()
    result = optimize(model, freeze_initializers=True)
    assert len(result.report.removed_inputs) == 4 and result.report.applied == () and result.report.changed
    assert [v.name for v in result.model.graph.input] == ["x"]
    assert op_count(result.model, "BatchNormalization") == 1
    np.testing.assert_array_equal(run(model, feeds_for(model))[0], run(result.model, feeds_for(model))[0])


def test_freezing_an_ir3_model_removes_nothing_it_must_list():
    """IR 3 must list every initializer as an input (and they are constants anyway): nothing to remove."""
    model = case_model("conv_bn-weight", ir_version=3)
    listed = {v.name for v in model.graph.input}
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in model.graph.initializer if t.name not in listed)
    result = optimize(model, verify=False, freeze_initializers=True)
    assert result.report.removed_inputs == () and result.model.ir_version == 3
    assert [f.rule for f in result.report.applied] == ["conv_bn"]
    assert set(initializer_inputs(result.model)) == {t.name for t in result.model.graph.initializer}
    assert_equivalent(model, result.model)


def test_inspect_with_freeze_agrees_with_optimize():
    model = case_model("matmul_bn")
    assert [s.reason for s in inspect(model).batchnorms] == [Reason.OVERRIDABLE_INITIALIZER]
    frozen = inspect(model, freeze_initializers=True)
    assert [(s.foldable, s.rule) for s in frozen.batchnorms] == [(True, "matmul_bn")]


def test_subgraph_inputs_are_never_touched():
    """A Loop body's inputs are the iteration count, condition and carried values: freezing leaves them."""
    b = GraphBuilder(seed=4)
    body_in = [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
               helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
               helper.make_tensor_value_info("acc", onnx.TensorProto.FLOAT, [2])]
    body = helper.make_graph([helper.make_node("Identity", ["cond"], ["cond_out"]),
                              helper.make_node("Add", ["acc", "one"], ["acc_out"])], "body", body_in,
                             [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
                              helper.make_tensor_value_info("acc_out", onnx.TensorProto.FLOAT, [2])])
    one = b.init(np.ones(2, np.float32), "one", overridable=True)
    trip, cond = b.init(np.array(3, np.int64), "trip"), b.init(np.array(True), "keep_going")
    b.nodes.append(helper.make_node("Loop", [trip, cond, b.input("start", [2])], ["total"], body=body))
    b.output("total", shape=[2])
    model = b.build()
    result = optimize(model, verify=False, freeze_initializers=True)
    assert result.report.removed_inputs == (one,)
    assert [v.name for v in result.model.graph.node[0].attribute[0].g.input] == ["i", "cond", "acc"]
    feeds = {"start": np.zeros(2, np.float32)}
    np.testing.assert_array_equal(run(model, feeds)[0], run(result.model, feeds)[0])
