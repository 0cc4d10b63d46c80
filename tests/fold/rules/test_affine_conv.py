"""affine_conv: a per-channel Mul/Add/Sub/Div before a Conv folds into that Conv (a shift only where the
Conv pads nothing); Concat -> Mul -> Add -> 1x1 Conv (Keras 3 BN before a conv) folds completely."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_fp16_no_worse
from tests.fold.rules._affine_helpers import assert_folds, assert_site_refused, signed
from tests.fold.rules.safety import SafetyCase

C = 6


def _act(b: GraphBuilder, channels: int = C, dtype=None) -> str:
    x = b.input("x", ["N", channels, 6, 6], dtype)
    out = b.node("Relu", [x])
    b.channels[out] = channels
    return out


def keras3_model() -> onnx.ModelProto:
    """Concat(Relu, Sigmoid) -> Mul -> Add -> 1x1 Conv without bias: a Keras 3 BN before a conv."""
    b = GraphBuilder(seed=0)
    x = b.input("x", ["N", 3, 6, 6])
    cat = b.node("Concat", [b.node("Relu", [x]), b.node("Sigmoid", [x])], axis=1)
    z = b.node("Mul", [cat, b.init(signed(b.rng, [1, C, 1, 1]))], name="mul")
    z = b.node("Add", [z, b.init(signed(b.rng, [1, C, 1, 1]))], name="add")
    b.channels[z] = C
    b.output(b.conv(z, 4, k=1, bias=False))
    return b.build()


def op_into_conv_model(op: str, const_first: bool, group: int, **conv) -> onnx.ModelProto:
    """Relu(x) -> *op* with a [C, 1, 1] constant -> Conv (a VALID 3x3 one unless *conv* says otherwise)."""
    b = GraphBuilder(seed=1)
    x, c = _act(b), b.init(signed(b.rng, [C, 1, 1]))
    z = b.node(op, [c, x] if const_first else [x, c])
    b.channels[z] = C
    b.output(b.conv(z, 6, group=group, **(conv or {"k": 3, "auto_pad": "VALID"})))
    return b.build()


def fp16_scalar_model() -> onnx.ModelProto:
    b = GraphBuilder(seed=3, dtype=np.float16)
    z = b.node("Add", [_act(b, dtype=np.float16), b.init(np.array(0.75, np.float16))])
    b.channels[z] = C
    b.output(b.conv(z, 4, k=1))
    return b.build()


def test_keras3_concat_mul_add_conv():
    model = keras3_model()
    y = model.graph.output[0].name
    result = assert_folds(model, ["affine_conv", "affine_conv"], ["Relu", "Sigmoid", "Concat", "Conv"])
    assert result.model.graph.node[-1].output[0] == y
    assert [a.node for a in result.report.applied] == ["add", "mul"]  # nearest the Conv first


@pytest.mark.parametrize("op,const_first", [("Mul", True), ("Sub", False), ("Sub", True), ("Div", False),
                                            ("Add", True)])
@pytest.mark.parametrize("group", [1, 2, C])
def test_each_op_into_grouped_unpadded_conv(op, const_first, group):
    assert_folds(op_into_conv_model(op, const_first, group), ["affine_conv"], ["Relu", "Conv"])


def test_pure_scale_folds_into_a_padded_conv():
    """s * 0 = 0: a Mul (no shift) keeps the zero border, so padding does not matter."""
    b = GraphBuilder(seed=2)
    z = b.node("Div", [_act(b), b.init(signed(b.rng, [1, C, 1, 1]))])
    b.channels[z] = C
    b.output(b.conv(z, 4, k=3, pads=[1, 1, 1, 1]))
    assert_folds(b.build(), ["affine_conv"], ["Relu", "Conv"])


def test_fp16_and_scalar():
    model = fp16_scalar_model()
    result = optimize(model, verify=False)
    assert [a.rule for a in result.report.applied] == ["affine_conv"]
    assert_fp16_no_worse(model, result.model)


# ---- one negative per refusal -------------------------------------------------------------


def _site(b: GraphBuilder, const: np.ndarray, op: str = "Add", x: str | None = None, **conv) -> None:
    z = b.node(op, [x or _act(b), b.init(const)], name="site")
    b.channels[z] = C
    b.output(b.conv(z, 4, **conv))


def test_refuses_shift_into_padded_conv():
    b = GraphBuilder(seed=4)
    _site(b, signed(b.rng, [C, 1, 1]), k=3, pads=[1, 1, 1, 1])
    assert_site_refused(b.build(), "site", Reason.CONSUMER_CONV_PADDED)


def test_refuses_output_read_elsewhere():
    b = GraphBuilder(seed=5)
    _site(b, signed(b.rng, [C, 1, 1]), k=1)
    b.output(b.node("Relu", ["site_out"]))
    assert_site_refused(b.build(), "site", Reason.BN_HAS_OTHER_CONSUMERS)


def test_refuses_output_that_is_a_graph_output():
    b = GraphBuilder(seed=6)
    _site(b, signed(b.rng, [C, 1, 1]), k=1)
    b.output("site_out")
    assert_site_refused(b.build(), "site", Reason.BN_OUTPUT_IS_GRAPH_OUTPUT)


def test_refuses_constant_on_another_axis():
    b = GraphBuilder(seed=7)
    _site(b, signed(b.rng, [6]), k=1)  # [6] broadcasts along W, not the channels
    assert_site_refused(b.build(), "site", Reason.NOT_PER_CHANNEL)


def test_refuses_constant_that_broadcasts_the_channels():
    """x has one channel; the [C, 1, 1] constant widens it to C: the Conv's weights can't absorb that."""
    b = GraphBuilder(seed=8)
    x = b.node("Relu", [b.input("x", ["N", 1, 6, 6])])
    _site(b, signed(b.rng, [C, 1, 1]), x=x, k=1)
    assert_site_refused(b.build(), "site", Reason.SHAPE_MISMATCH)


def test_refuses_unknown_input_shape():
    b = GraphBuilder(seed=9)
    b.inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
    _site(b, signed(b.rng, [C, 1, 1]), x="x", k=1)
    assert_site_refused(b.build(), "site", Reason.RANK_UNKNOWN, runnable=False)


def test_refuses_conv_weight_not_constant():
    b = GraphBuilder(seed=10)
    b.inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, C, 1, 1]))
    z = b.node("Mul", [_act(b), b.init(signed(b.rng, [C, 1, 1]))], name="site")
    b.output(b.node("Conv", [z, "w"]))
    assert_site_refused(b.build(), "site", Reason.WEIGHT_NOT_CONSTANT, runnable=False)


def test_refuses_overflow():
    b = GraphBuilder(seed=11)
    _site(b, np.zeros([C, 1, 1], np.float32), op="Div", k=1)  # x / 0: not finite
    assert_site_refused(b.build(), "site", Reason.FOLD_OVERFLOW, runnable=False)


# ---- the cases the tier without verification folds (tests/fold/rules/test_safe_without_verification.py) -----

def _refused_site(kind: str) -> onnx.ModelProto:
    """Relu(x) -> Add "site" -> Conv, spoilt by *kind*: "padded" (a padded 3x3 Conv), "read" (the site read
    again), "output" (the site a graph output), "axis" (a [C] constant, along W), "widen" (one input channel),
    "rank" (no input shape), "weight" (the Conv weight fed at run time), "overflow" (Div by zero)."""
    b = GraphBuilder(seed=4)
    if kind == "rank":
        b.inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
        x = "x"
    else:
        x = b.node("Relu", [b.input("x", ["N", 1, 6, 6])]) if kind == "widen" else _act(b)
    const = {"axis": signed(b.rng, [C]), "overflow": np.zeros([C, 1, 1], np.float32)}.get(kind)
    if const is None:
        const = signed(b.rng, [C, 1, 1])
    z = b.node("Div" if kind == "overflow" else "Add", [x, b.init(const)], name="site")
    b.channels[z] = C
    if kind == "weight":
        b.inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, C, 1, 1]))
        b.output(b.node("Conv", [z, "w"]))
    else:
        b.output(b.conv(z, 4, **({"k": 3, "pads": [1, 1, 1, 1]} if kind == "padded" else {"k": 1})))
    if kind == "read":
        b.output(b.node("Relu", [z]))
    if kind == "output":
        b.output(z)
    return b.build()


def _site_case(kind: str, reason: Reason, runnable: bool = True) -> SafetyCase:
    return SafetyCase(functools.partial(_refused_site, kind), "affine_conv", reason, runnable)


SAFETY_CASES = {
    "affine_conv-keras3": SafetyCase(keras3_model, "affine_conv"),
    **{f"affine_conv-{op}-{int(first)}-g{group}": SafetyCase(functools.partial(op_into_conv_model, op, first, group),
                                                              "affine_conv")
       for op, first, group in [("Mul", True, 2), ("Sub", True, 1), ("Div", False, C), ("Add", False, 1)]},
    "affine_conv-scale-padded": SafetyCase(functools.partial(op_into_conv_model, "Div", False, 1, k=3,
                                                             pads=[1, 1, 1, 1]), "affine_conv"),
    "affine_conv-fp16-scalar": SafetyCase(fp16_scalar_model, "affine_conv"),
    "affine_conv-padded": _site_case("padded", Reason.CONSUMER_CONV_PADDED),
    "affine_conv-read": _site_case("read", Reason.BN_HAS_OTHER_CONSUMERS),
    "affine_conv-output": _site_case("output", Reason.BN_OUTPUT_IS_GRAPH_OUTPUT),
    "affine_conv-axis": _site_case("axis", Reason.NOT_PER_CHANNEL),
    "affine_conv-widen": _site_case("widen", Reason.SHAPE_MISMATCH),
    "affine_conv-rank": _site_case("rank", Reason.RANK_UNKNOWN, runnable=False),  # no shape to feed
    "affine_conv-weight": _site_case("weight", Reason.WEIGHT_NOT_CONSTANT),
    "affine_conv-overflow": _site_case("overflow", Reason.FOLD_OVERFLOW, runnable=False),  # x / 0 is inf already
}
