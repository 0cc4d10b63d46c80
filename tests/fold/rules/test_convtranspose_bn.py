"""convtranspose_bn: ConvTranspose -> BatchNormalization folds per output channel, per group."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, assert_fp16_no_worse, assert_refused, op_count
from tests.fold.rules.safety import SafetyCase


def deconv_bn_model(dims: int = 2, c_in: int = 4, c_out: int = 6, *, group: int = 1, bias: bool = True,
                    size: int = 5, dtype=np.float32, **attrs) -> onnx.ModelProto:
    b = GraphBuilder(dtype=dtype)
    x = b.input("x", ["N", c_in, *[size] * dims])
    y = b.bn(b.conv_transpose(x, c_out, group=group, bias=bias, dims=dims, name="deconv", **attrs), name="bn")
    b.output(b.node("Relu", [y], name="relu"))
    return b.build()


def fold(model: onnx.ModelProto, equivalent: bool = True):
    result = optimize(model, verify=False)
    assert op_count(result.model, "BatchNormalization") == 0
    assert [a.rule for a in result.report.applied] == ["convtranspose_bn"]
    assert result.report.refused == ()
    deconv = next(n for n in result.model.graph.node if n.op_type == "ConvTranspose")
    assert deconv.name == "deconv" and deconv.output[0] == "bn_out"
    assert result.report.tensor_map == {"deconv_out": "bn_out"}
    if equivalent:
        assert_equivalent(model, result.model)
    return result


LAYOUTS = {
    "1d": dict(dims=1),
    "2d": dict(),
    "2d-no-bias": dict(bias=False),
    "group2": dict(group=2),
    "group2-no-bias-stride": dict(group=2, bias=False, strides=[2, 2]),
    "group3-uneven": dict(c_in=6, c_out=9, group=3),
    "depthwise": dict(c_in=4, c_out=4, group=4),
    "3d": dict(dims=3, size=4),
    "3d-group2": dict(dims=3, size=4, group=2, bias=False),
    "output-padding": dict(strides=[2, 3], output_padding=[1, 2]),
    "group2-output-padding-dilation-pads": dict(group=2, strides=[2, 2], output_padding=[1, 0],
                                                dilations=[2, 1], pads=[1, 0, 0, 1]),
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_folds_every_layout(layout):
    fold(deconv_bn_model(**layout))


def test_grouped_weight_is_scaled_per_group_column():
    """The trap: channel o = g*(C_out/g) + j lives in column j of group g's rows, not in row o."""
    model = deconv_bn_model(c_in=4, c_out=6, group=2, bias=False)
    folded = fold(model).model
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    gamma, _, _, var = (inits[n].astype(np.float64) for n in bn.input[1:])
    scale = gamma / np.sqrt(var + 1e-5)
    w_name = next(n for n in model.graph.node if n.op_type == "ConvTranspose").input[1]
    expected = inits[w_name].reshape(2, 2, 3, 3, 3) * scale.reshape(2, 1, 3, 1, 1)
    np.testing.assert_allclose(after[w_name], expected.reshape(4, 3, 3, 3), rtol=1e-6, atol=1e-7)


def test_fp16_group2_is_no_worse_than_unfolded():
    model = deconv_bn_model(group=2, dtype=np.float16)
    folded = fold(model, equivalent=False).model
    assert {t.data_type for t in folded.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert_fp16_no_worse(model, folded)


def test_grouped_channel_that_would_underflow_is_refused():
    """Channel 4 is column 1 of group 1: other groups' rows of that column must not hide its underflow."""
    b = GraphBuilder(opset=15, dtype=np.float16)
    x = b.input("x", ["N", 4, 5, 5])
    gamma, beta, mean, var = b.bn_params(6, np.float32)
    gamma[4] = 1e-9
    b.output(b.bn(b.conv_transpose(x, 6, group=2), params=[gamma, beta, mean, var]))
    assert_refused(b.build(), Reason.FOLD_UNDERFLOW)


def test_fold_that_would_overflow_is_refused():
    b = GraphBuilder(opset=15, dtype=np.float16)
    x = b.input("x", ["N", 4, 5, 5])
    gamma, beta, mean, var = b.bn_params(6, np.float32)
    gamma[5], var[5] = 1e7, 1.0
    b.output(b.bn(b.conv_transpose(x, 6, group=2), params=[gamma, beta, mean, var]))
    result = assert_refused(b.build(), Reason.FOLD_OVERFLOW, runnable=False)  # the fp16 BN output is inf
    assert all(np.isfinite(numpy_helper.to_array(t)).all() for t in result.model.graph.initializer)


def test_output_read_twice_is_refused():
    b = GraphBuilder()
    d = b.conv_transpose(b.input("x", ["N", 4, 5, 5]), 6, group=2)
    b.output(b.node("Mul", [b.bn(d), d]))
    assert_refused(b.build(), Reason.PRODUCER_HAS_OTHER_CONSUMERS)


# ---- the cases the tier without verification folds (tests/fold/rules/test_safe_without_verification.py) -----

def _deconv_with(change, dtype=np.float16) -> onnx.ModelProto:
    b = GraphBuilder(opset=15, dtype=dtype)
    x = b.input("x", ["N", 4, 5, 5])
    params = b.bn_params(6, np.float32)
    change(params)
    b.output(b.bn(b.conv_transpose(x, 6, group=2), params=params))
    return b.build()


def _read_twice() -> onnx.ModelProto:
    b = GraphBuilder()
    d = b.conv_transpose(b.input("x", ["N", 4, 5, 5]), 6, group=2)
    b.output(b.node("Mul", [b.bn(d), d]))
    return b.build()


def _underflow(params) -> None:
    params[0][4] = 1e-9


SAFETY_CASES = {
    **{f"convtranspose_bn-{name}": SafetyCase(functools.partial(deconv_bn_model, **layout), "convtranspose_bn")
       for name, layout in LAYOUTS.items()},
    "convtranspose_bn-fp16-group2": SafetyCase(functools.partial(deconv_bn_model, group=2, dtype=np.float16),
                                               "convtranspose_bn"),
    "convtranspose_bn-underflow": SafetyCase(functools.partial(_deconv_with, _underflow), "convtranspose_bn",
                                             Reason.FOLD_UNDERFLOW),
    "convtranspose_bn-read-twice": SafetyCase(_read_twice, "convtranspose_bn", Reason.PRODUCER_HAS_OTHER_CONSUMERS),
}
