"""conv_bn: Conv -> BatchNormalization folds into the Conv for every layout; each refusal keeps the BN."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bnfold import optimize
from bnfold.errors import UsageError
from bnfold.reasons import Reason
from tests.builders import (
    GraphBuilder,
    assert_equivalent,
    assert_fp16_no_worse,
    assert_refused,
    feeds_for,
    op_count,
    run,
)


def conv_bn_model(dims: int = 2, c_in: int = 4, c_out: int = 6, *, group: int = 1, bias: bool = True,
                  k: int = 3, size: int = 9, **conv_attrs) -> onnx.ModelProto:
    b = GraphBuilder()
    x = b.input("x", ["N", c_in, *[size] * dims])
    y = b.bn(b.conv(x, c_out, k, group=group, bias=bias, dims=dims, name="conv", **conv_attrs), name="bn")
    b.output(b.node("Relu", [y], name="relu"))
    return b.build()


def assert_folded(model: onnx.ModelProto, folds: int = 1, equivalent: bool = True):
    result = optimize(model, verify=False)
    assert op_count(result.model, "BatchNormalization") == 0
    assert [a.rule for a in result.report.applied] == ["conv_bn"] * folds
    assert (result.report.before.batchnorms, result.report.after.batchnorms) == (folds, 0)
    assert result.report.refused == ()
    if equivalent:
        assert_equivalent(model, result.model)
    return result


def conv_node(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "Conv")


LAYOUTS = {
    "1d": dict(dims=1),
    "1d-no-bias-stride": dict(dims=1, bias=False, strides=[2]),
    "2d": dict(),
    "2d-no-bias": dict(bias=False),
    "3d": dict(dims=3, size=5),
    "3d-no-bias-group": dict(dims=3, size=5, group=2, bias=False),
    "group2": dict(group=2),
    "depthwise": dict(c_in=6, c_out=6, group=6),
    "depthwise-multiplier": dict(c_in=3, c_out=6, group=3, bias=False),
    "dilation-stride-pads": dict(dilations=[2, 1], strides=[2, 1], pads=[1, 0, 2, 1]),
    "same-upper": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    "valid": dict(auto_pad="VALID", bias=False),
    "1x1": dict(k=1, c_out=8),
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_folds_every_layout(layout):
    model = conv_bn_model(**layout)
    folded = assert_folded(model).model
    assert op_count(folded, "Conv") == 1 and len(folded.graph.node) == 2
    conv = conv_node(folded)
    assert conv.name == "conv" and conv.output[0] == "bn_out"
    assert conv.input[2], "the folded conv always has a bias (the BN shift)"


def test_names_stats_and_tensor_map():
    model = conv_bn_model()
    result = assert_folded(model)
    assert result.report.tensor_map == {"conv_out": "bn_out"}
    assert [n.name for n in result.model.graph.node] == ["conv", "relu"]
    applied = result.report.applied[0]
    assert (applied.node, applied.target, applied.target_op, applied.output) == ("bn", "conv", "Conv", "bn_out")
    before, after = result.report.before, result.report.after
    assert after.nodes == before.nodes - 1
    assert after.parameters == before.parameters - 4 * 6  # gamma, beta, mean, var of 6 channels


def test_default_optimize_verifies_the_fold_in_onnxruntime():
    result = optimize(conv_bn_model(group=2))
    assert result.report.verification.status == "passed"
    assert [a.rule for a in result.report.applied] == ["conv_bn"] and not result.report.reverted


def test_conv_bn_bn_folds_completely():
    b = GraphBuilder()
    x = b.input("x", ["N", 3, 8, 8])
    y1 = b.bn(b.conv(x, 4, name="conv"), name="bn1")
    y2 = b.bn(y1, name="bn2")
    b.output(y2)
    result = assert_folded(b.build(), folds=2)
    assert conv_node(result.model).output[0] == y2 == "bn2_out"
    assert result.report.tensor_map == {"conv_out": "bn2_out", "bn1_out": "bn2_out"}


def test_weights_as_constant_nodes_are_updated_in_place():
    b = GraphBuilder()
    x = b.input("x", ["N", 3, 8, 8])
    w, bias = b.constant(b.weight([5, 3, 3, 3]), "w"), b.constant(np.full(5, 0.2, np.float32), "b")
    b.output(b.bn(b.node("Conv", [x, w, bias], name="conv"), 5))
    model = b.build()
    folded = assert_folded(model).model
    assert conv_node(folded).input[1:] == ["w", "b"]
    assert op_count(folded, "Constant") == 2 and not folded.graph.initializer


def test_weight_shared_by_two_convs_folds_into_each_without_clobbering_the_other():
    b = GraphBuilder()
    x = b.input("x", ["N", 3, 6, 6])
    w = b.init(b.weight([4, 3, 3, 3]), "shared")
    y1, y2 = (b.bn(b.node("Conv", [x, w], name=f"conv{i}"), 4) for i in (1, 2))
    b.output(b.node("Add", [y1, y2]))
    model = b.build()
    folded = assert_folded(model, folds=2).model
    weights = [n.input[1] for n in folded.graph.node if n.op_type == "Conv"]
    assert len(set(weights)) == 2 and "shared" in weights


def test_fp16_conv_is_no_worse_than_unfolded():
    b = GraphBuilder(dtype=np.float16)
    x = b.input("x", ["N", 4, 8, 8])
    b.output(b.bn(b.conv(x, 6, group=2), name="bn"))
    model = b.build()
    folded = assert_folded(model, equivalent=False).model
    assert {t.data_type for t in folded.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert_fp16_no_worse(model, folded)


def test_fp16_conv_with_fp32_bn_params_keeps_fp16():
    b = GraphBuilder(opset=15, dtype=np.float16)
    x = b.input("x", ["N", 3, 8, 8])
    b.output(b.bn(b.conv(x, 4, name="conv"), param_dtype=np.float32))
    model = b.build()
    folded = assert_folded(model, equivalent=False).model
    inits = {t.name: t for t in folded.graph.initializer}
    conv = conv_node(folded)
    assert {inits[n].data_type for n in conv.input[1:]} == {onnx.TensorProto.FLOAT16}
    assert_fp16_no_worse(model, folded)


# ---- refusals: the exact reason, the BN still there, the graph untouched ----------------------------------

def conv_then_bn(opset: int = 17, dtype=np.float32, **bn_options) -> tuple[GraphBuilder, str, str]:
    b = GraphBuilder(opset=opset, dtype=dtype)
    x = b.input("x", ["N", 3, 6, 6])
    c = b.conv(x, 4, name="conv")
    return b, c, b.bn(c, name="bn", **bn_options)


def test_conv_output_read_twice_is_refused():
    b, c, y = conv_then_bn()
    b.output(b.node("Add", [y, c]))
    result = assert_refused(b.build(), Reason.PRODUCER_HAS_OTHER_CONSUMERS)
    assert result.report.refused[0].rule == "conv_bn" and "conv_out" in result.report.refused[0].detail


def test_conv_output_that_is_a_graph_output_is_refused():
    b, c, y = conv_then_bn()
    b.output(y)
    b.output(c)
    assert_refused(b.build(), Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT)


def test_weight_fed_at_run_time_is_refused():
    b = GraphBuilder()
    x, w = b.input("x", ["N", 3, 6, 6]), b.input("w", [4, 3, 3, 3])
    b.output(b.bn(b.node("Conv", [x, w]), 4))
    assert_refused(b.build(), Reason.WEIGHT_NOT_CONSTANT)


def test_bn_mean_computed_at_run_time_is_refused():
    b = GraphBuilder()
    c = b.conv(b.input("x", ["N", 3, 6, 6]), 4)
    gamma, beta, mean, var = b.bn_params(4)
    names = [b.init(gamma), b.init(beta), b.node("Abs", [b.init(mean)]), b.init(var)]
    b.output(b.node("BatchNormalization", [c, *names], name="bn"))
    assert_refused(b.build(), Reason.PARAMS_NOT_CONSTANT)


def test_overridable_bn_params_are_refused():
    b, _, y = conv_then_bn(overridable=True)
    b.output(y)
    assert_refused(b.build(), Reason.OVERRIDABLE_INITIALIZER)


def test_overridable_conv_weight_is_refused():
    b = GraphBuilder()
    x = b.input("x", ["N", 3, 6, 6])
    w = b.init(b.weight([4, 3, 3, 3]), "w", overridable=True)
    b.output(b.bn(b.node("Conv", [x, w]), 4))
    assert_refused(b.build(), Reason.OVERRIDABLE_INITIALIZER)


def test_training_mode_is_refused():
    b, _, y = conv_then_bn(opset=15, training_mode=1, n_out=3)
    b.output(y)
    result = assert_refused(b.build(), Reason.TRAINING_MODE)
    assert result.report.refused[0].detail == "training_mode=1"


def test_used_running_statistics_are_refused():
    """Opset 14+ with training_mode=0 yet a read running-mean output (opsets 7-13: training mode, see
    tests/fold/rules/test_training_mode.py). onnxruntime rejects such a node, so it is not run."""
    b, _, y = conv_then_bn(opset=15, n_out=3)
    b.output(y)
    b.output(f"{y}1", shape=[4])
    assert_refused(b.build(), Reason.EXTRA_OUTPUTS_USED, runnable=False)


def test_spatial_zero_is_refused():
    b = GraphBuilder(opset=8)
    x = b.input("x", [2, 3, 6, 6])
    per_activation = [np.abs(p)[:, None, None] * np.ones((4, 4, 4), np.float32) for p in b.bn_params(4)]
    b.output(b.bn(b.conv(x, 4), 4, params=per_activation, spatial=0))
    assert_refused(b.build(ir_version=3), Reason.SPATIAL_ZERO)


def test_fp16_fold_that_would_overflow_is_refused():
    b = GraphBuilder(opset=15, dtype=np.float16)
    x = b.input("x", ["N", 3, 6, 6])
    weight = b.weight([4, 3, 3, 3])
    weight[1, 0, 0, 0] = 1000.0
    gamma, beta, mean, var = b.bn_params(4, np.float32)
    gamma[1] = 500.0  # 1000 * 500 > 65504
    b.output(b.bn(b.node("Conv", [x, b.init(weight, "w")]), 4, params=[gamma, beta, mean, var]))
    model = b.build()
    result = assert_refused(model, Reason.FOLD_OVERFLOW, runnable=False)
    assert all(np.isfinite(numpy_helper.to_array(t)).all() for t in result.model.graph.initializer)
    np.testing.assert_array_equal(numpy_helper.to_array(result.model.graph.initializer[0]), weight)
    small = {k: v * np.float16(1e-3) for k, v in feeds_for(model).items()}  # keep the fp16 BN output finite
    before, after = run(model, small)[0], run(result.model, small)[0]
    assert np.isfinite(after).all()
    np.testing.assert_array_equal(before, after)


def test_fp16_channel_that_would_underflow_to_zero_is_refused():
    b = GraphBuilder(opset=15, dtype=np.float16)
    x = b.input("x", ["N", 3, 6, 6])
    gamma, beta, mean, var = b.bn_params(4, np.float32)
    gamma[2] = 1e-9  # non-zero, but every folded weight of channel 2 rounds to 0 in fp16
    b.output(b.bn(b.conv(x, 4), params=[gamma, beta, mean, var]))
    assert_refused(b.build(), Reason.FOLD_UNDERFLOW)


@pytest.mark.parametrize("sizes", [(3, 3, 3, 3), (4, 4, 3, 4)], ids=["bn-narrower-than-conv", "ragged-params"])
def test_parameter_shapes_that_do_not_fit_are_refused(sizes):
    b = GraphBuilder()
    x = b.input("x", ["N", 3, 6, 6])
    params = [p[:n] for p, n in zip(b.bn_params(4), sizes, strict=True)]
    b.output(b.bn(b.conv(x, 4), params=params))
    assert_refused(b.build(), Reason.SHAPE_MISMATCH, runnable=False)  # ORT rejects such a model


def test_integer_bn_params_are_refused():
    b = GraphBuilder()
    x = b.input("x", ["N", 3, 6, 6])
    gamma, beta, mean, var = b.bn_params(4)
    b.output(b.bn(b.conv(x, 4), params=[gamma, beta, mean.astype(np.int64), var]))
    assert_refused(b.build(), Reason.UNSUPPORTED_DTYPE, runnable=False)  # invalid ONNX; refused, not crashed


def test_bn_after_add_has_no_foldable_neighbour():
    b = GraphBuilder()
    x, z = b.input("x", ["N", 3, 6, 6]), b.input("z", ["N", 3, 6, 6])
    b.output(b.bn(b.node("Add", [x, z]), 3, name="bn"))
    result = assert_refused(b.build(), Reason.NO_FOLDABLE_NEIGHBOUR)
    assert result.report.refused[0].rule is None and "producer Add" in result.report.refused[0].detail


def test_disabled_rule_is_reported():
    b, _, y = conv_then_bn()
    b.output(b.node("Relu", [y]))
    result = assert_refused(b.build(), Reason.RULE_DISABLED, rules=["bn_conv"])
    assert result.report.rules == ("bn_conv",) and result.report.refused[0].rule == "conv_bn"


def test_unknown_rule_name_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown rule"):
        optimize(conv_bn_model(), verify=False, rules=["conv_bn", "no_such_rule"])


def test_chain_of_folds_rounds_once_in_float64():
    """Conv -> BN -> BN in fp16: the weight written equals the float64 composition rounded once,
    not the first fold rounded to fp16 and then folded again."""
    from onnx import numpy_helper

    from bnfold.fold import fold_math

    b = GraphBuilder(dtype=np.float16, seed=5)
    conv = b.conv(b.input("x", [1, 3, 6, 6]), 4)
    p1, p2 = b.bn_params(4), b.bn_params(4)
    b.output(b.bn(b.bn(conv, params=p1), params=p2))
    model = b.build()
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    conv_node = next(n for n in model.graph.node if n.op_type == "Conv")
    w, bias = weights[conv_node.input[1]], weights[conv_node.input[2]]
    s1, t1 = fold_math.bn_scale_shift(*p1, eps=1e-5)
    s2, t2 = fold_math.bn_scale_shift(*p2, eps=1e-5)
    w64, b64 = fold_math.fold_into_conv(*fold_math.fold_into_conv(w, bias, s1, t1), s2, t2)
    folded = optimize(model, verify=False).model
    out = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    conv_after = next(n for n in folded.graph.node if n.op_type == "Conv")
    assert np.array_equal(out[conv_after.input[1]], w64.astype(np.float16))
    assert np.array_equal(out[conv_after.input[2]], b64.astype(np.float16))

