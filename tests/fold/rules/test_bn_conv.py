"""bn_conv: a BatchNormalization folded into the unpadded Conv that reads it."""

from __future__ import annotations

import functools

import onnx
import pytest
from onnx import numpy_helper

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, op_count
from tests.fold.rules.safety import SafetyCase


def _bn_then_conv(c_in: int = 4, c_out: int = 6, *, spatial: tuple[int, ...] = (8, 8), k: int = 3,
                  seed: int = 0, **conv_attrs):
    b = GraphBuilder(seed=seed)
    x = b.input("x", ["N", c_in, *spatial])
    z = b.bn(x, name="bn")
    y = b.conv(z, c_out, k, dims=len(spatial), name="conv", **conv_attrs)
    b.output(y, shape=None)
    return b.build(), x, y


def _folded(model, x, y):
    result = optimize(model, verify=False)
    out = result.model
    assert op_count(out, "BatchNormalization") == 0
    (conv,) = [n for n in out.graph.node if n.op_type == "Conv"]
    assert conv.name == "conv" and list(conv.output) == [y] and conv.input[0] == x
    assert [(a.rule, a.node, a.target) for a in result.report.applied] == [("bn_conv", "bn", "conv")]
    assert result.report.refused == ()
    assert_equivalent(model, out)
    assert_equivalent(model, out, seed=1)
    return result


@pytest.mark.parametrize("attrs", [
    {"pads": [0, 0, 0, 0]},
    {},  # no pads attribute at all
    {"strides": [2, 2], "dilations": [2, 1]},
    {"auto_pad": "VALID"},
    {"auto_pad": "VALID", "strides": [2, 2]},
], ids=["pads0", "default", "strided-dilated", "valid", "valid-strided"])
def test_unpadded_conv_absorbs_the_bn(attrs):
    _folded(*_bn_then_conv(**attrs))


@pytest.mark.parametrize("c_in,c_out,group", [(4, 6, 2), (6, 6, 3), (4, 4, 4), (4, 8, 4)],
                         ids=["grouped", "grouped-3", "depthwise", "depthwise-multiplier"])
def test_grouped_and_depthwise_consumers(c_in, c_out, group):
    _folded(*_bn_then_conv(c_in, c_out, group=group, pads=[0, 0, 0, 0]))


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_same_padding_with_1x1_kernel_pads_nothing(auto_pad):
    _folded(*_bn_then_conv(k=1, auto_pad=auto_pad, strides=[2, 2], spatial=(7, 7)))


def test_3d_consumer():
    _folded(*_bn_then_conv(3, 5, spatial=(4, 6, 5), k=2))


def test_1d_consumer():
    _folded(*_bn_then_conv(3, 5, spatial=(9,), k=3))


def test_conv_without_bias_gets_one():
    model, x, y = _bn_then_conv(bias=False)
    result = _folded(model, x, y)
    conv = result.model.graph.node[0]
    assert len(conv.input) == 3 and conv.input[2] == "conv_bias"
    bias = {t.name: t for t in result.model.graph.initializer}["conv_bias"]
    assert numpy_helper.to_array(bias).shape == (6,)


def test_bn_after_shared_conv_output_folds_forward():
    """conv_bn can't absorb a BN whose producer has two readers; bn_conv takes it instead."""
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 3, 8, 8])
    c = b.conv(x, 4, name="conv0")
    z = b.bn(c, name="bn")
    y = b.conv(z, 5, 1, name="conv")
    b.output(b.node("Add", [b.conv(c, 5, 1), y]), shape=None)
    model = b.build()
    result = optimize(model, verify=False)
    assert [a.rule for a in result.report.applied] == ["bn_conv"]
    assert op_count(result.model, "BatchNormalization") == 0
    assert_equivalent(model, result.model)


def _refused(model, reason: Reason):
    result = optimize(model, verify=False)
    assert result.report.applied == ()
    assert [(s.reason, s.rule, s.node) for s in result.report.refused] == [(reason, "bn_conv", "bn")]
    assert op_count(result.model, "BatchNormalization") == 1
    assert result.model.SerializeToString() == model.SerializeToString()
    assert_equivalent(model, result.model)
    return result


@pytest.mark.parametrize("attrs", [
    {"pads": [1, 1, 1, 1]},
    {"pads": [0, 0, 0, 1]},
    {"auto_pad": "SAME_UPPER"},
    {"auto_pad": "SAME_LOWER"},
], ids=["pads1", "one-sided", "same-upper-3x3", "same-lower-3x3"])
def test_padded_consumer_is_refused(attrs):
    model, _, _ = _bn_then_conv(**attrs)
    result = _refused(model, Reason.CONSUMER_CONV_PADDED)
    assert "conv" in result.report.refused[0].detail


def test_bn_read_by_two_convs_is_refused():
    b = GraphBuilder(seed=1)
    x = b.input("x", ["N", 4, 8, 8])
    z = b.bn(x, name="bn")
    b.output(b.node("Add", [b.conv(z, 5, 1, name="conv"), b.conv(z, 5, 1, name="conv_b")]), shape=None)
    _refused(b.build(), Reason.BN_HAS_OTHER_CONSUMERS)


def test_bn_read_by_conv_and_relu_is_refused():
    b = GraphBuilder(seed=1)
    x = b.input("x", ["N", 4, 8, 8])
    z = b.bn(x, name="bn")
    b.output(b.conv(z, 5, 1, name="conv"), shape=None)
    b.output(b.node("Relu", [z]), shape=None)
    _refused(b.build(), Reason.BN_HAS_OTHER_CONSUMERS)


def test_bn_output_that_is_graph_output_is_refused():
    b = GraphBuilder(seed=2)
    x = b.input("x", ["N", 4, 8, 8])
    z = b.bn(x, name="bn")
    b.output(b.conv(z, 5, 1, name="conv"), shape=None)
    b.output(z, shape=None)
    _refused(b.build(), Reason.BN_OUTPUT_IS_GRAPH_OUTPUT)


def test_bn_feeding_the_conv_weight_is_left_alone():
    """A BN whose output is the Conv's *weight* is no bn_conv site: nothing folds."""
    b = GraphBuilder(seed=4)
    x = b.input("x", ["N", 2, 6, 6])
    w = b.init(b.weight([3, 2, 1, 1]))
    names = [b.init(p) for p in b.bn_params(2)]  # BN normalizes axis 1 of the [3, 2, 1, 1] weight
    z = b.node("BatchNormalization", [w, *names], name="bn")
    b.output(b.node("Conv", [x, z], name="conv"), shape=None)
    model = b.build()
    result = optimize(model, verify=False)
    assert result.report.applied == ()
    assert op_count(result.model, "BatchNormalization") == 1
    assert_equivalent(model, result.model)


# ---- the cases the tier without verification folds (tests/fold/rules/test_safe_without_verification.py) -----

def _model(**kwargs) -> onnx.ModelProto:
    return _bn_then_conv(**kwargs)[0]


def _bn_read_again(as_output: bool) -> onnx.ModelProto:
    b = GraphBuilder(seed=1)
    z = b.bn(b.input("x", ["N", 4, 8, 8]), name="bn")
    b.output(b.conv(z, 5, 1, name="conv"), shape=None)
    b.output(z if as_output else b.node("Relu", [z]), shape=None)
    return b.build()


SAFETY_CASES = {
    "bn_conv-default": SafetyCase(_model, "bn_conv"),
    "bn_conv-strided-dilated": SafetyCase(functools.partial(_model, strides=[2, 2], dilations=[2, 1]), "bn_conv"),
    "bn_conv-grouped": SafetyCase(functools.partial(_model, c_in=4, c_out=6, group=2), "bn_conv"),
    "bn_conv-depthwise-multiplier": SafetyCase(functools.partial(_model, c_in=4, c_out=8, group=4), "bn_conv"),
    "bn_conv-same-1x1": SafetyCase(functools.partial(_model, k=1, auto_pad="SAME_UPPER", strides=[2, 2],
                                                     spatial=(7, 7)), "bn_conv"),
    "bn_conv-3d": SafetyCase(functools.partial(_model, c_in=3, c_out=5, spatial=(4, 6, 5), k=2), "bn_conv"),
    "bn_conv-no-bias": SafetyCase(functools.partial(_model, bias=False), "bn_conv"),
    "bn_conv-padded": SafetyCase(functools.partial(_model, pads=[0, 0, 0, 1]), "bn_conv", Reason.CONSUMER_CONV_PADDED),
    "bn_conv-same-3x3": SafetyCase(functools.partial(_model, auto_pad="SAME_LOWER"), "bn_conv",
                                   Reason.CONSUMER_CONV_PADDED),
    "bn_conv-read-again": SafetyCase(functools.partial(_bn_read_again, False), "bn_conv",
                                     Reason.BN_HAS_OTHER_CONSUMERS),
    "bn_conv-graph-output": SafetyCase(functools.partial(_bn_read_again, True), "bn_conv",
                                       Reason.BN_OUTPUT_IS_GRAPH_OUTPUT),
}
