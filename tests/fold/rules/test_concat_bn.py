"""concat_bn: a BN (or per-channel Mul/Add) after a channel Concat of Conv/ConvTranspose/Gemm outputs splits
its parameters per segment and folds into every producer."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, assert_fp16_no_worse, assert_refused, op_count
from tests.fold.rules._affine_helpers import assert_folds, signed
from tests.fold.rules.safety import SafetyCase


def _branches(b: GraphBuilder, sizes=(4, 2)) -> list[str]:
    x = b.input("x", ["N", 3, 6, 6])
    outs = [b.conv(x, sizes[0], k=3)]
    for size in sizes[1:]:
        outs.append(b.conv_transpose(b.conv(x, 3, k=5), size, k=3))  # [N, size, 4, 4] like the first
    return outs


def _concat(b: GraphBuilder, inputs: list[str], axis: int = 1) -> str:
    out = b.node("Concat", inputs, axis=axis, name="cat")
    b.channels[out] = 6
    return out


def concat_bn_model(axis: int = 1, *, relu: bool = True, dtype=np.float32, seed: int = 0) -> onnx.ModelProto:
    """Concat(Conv [N, 4, 4, 4], ConvTranspose [N, 2, 4, 4]) on *axis* -> BN "bn" (-> Relu)."""
    b = GraphBuilder(seed=seed, dtype=dtype)
    y = b.bn(_concat(b, _branches(b), axis), 6, name="bn")
    b.output(b.node("Relu", [y], name="relu") if relu else y)
    return b.build()


def concat_mul_add_model() -> onnx.ModelProto:
    """Three segments (1, 2, 3 channels) -> Concat -> Mul -> Add, the Keras way of writing a BN."""
    b = GraphBuilder(seed=1)
    z = b.node("Mul", [_concat(b, _branches(b, (1, 2, 3))), b.init(signed(b.rng, [1, 6, 1, 1]))], name="mul")
    b.output(b.node("Add", [z, b.init(signed(b.rng, [6, 1, 1]))], name="add"))
    return b.build()


def concat_of_gemms_model() -> onnx.ModelProto:
    b = GraphBuilder(seed=2)
    a = b.input("a", ["N", 5])
    g1 = b.node("Gemm", [a, b.init(b.weight([5, 4])), b.init(b.weight([4]))], beta=0.5)
    g2 = b.node("Gemm", [a, b.init(b.weight([2, 5]))], transB=1)
    b.output(b.bn(_concat(b, [g1, g2]), 6, name="bn"))
    return b.build()


def concat_on_axis_two_model() -> onnx.ModelProto:
    b = GraphBuilder(seed=4)
    x = b.input("x", ["N", 3, 6, 6])
    cat = b.node("Concat", [b.conv(x, 4), b.conv(x, 4)], axis=2)
    b.output(b.bn(cat, 4, name="bn"))
    return b.build()


def branch_through_relu_model() -> onnx.ModelProto:
    """Concat(Conv, Relu(Conv)) -> BN: the second segment is not a foldable producer."""
    b = GraphBuilder(seed=5)
    x = b.input("x", ["N", 3, 6, 6])
    c1 = b.conv(x, 4)
    relu = b.node("Relu", [b.conv(x, 2)])
    b.output(b.bn(_concat(b, [c1, relu]), 6, name="bn"))
    return b.build()


@pytest.mark.parametrize("axis", [1, -3])
def test_bn_after_concat_of_conv_and_convtranspose(axis):
    model = concat_bn_model(axis)
    result = assert_folds(model, ["concat_bn"], ["Conv", "Conv", "ConvTranspose", "Concat", "Relu"])
    assert result.model.graph.node[3].output[0] == "bn_out"


def test_three_segments_and_keras_style_mul_add():
    assert_folds(concat_mul_add_model(), ["concat_bn", "concat_bn"],
                 ["Conv", "Conv", "ConvTranspose", "Conv", "ConvTranspose", "Concat"])


def test_concat_of_gemms():
    assert_folds(concat_of_gemms_model(), ["concat_bn"], ["Gemm", "Gemm", "Concat"])


def test_fp16():
    model = concat_bn_model(relu=False, dtype=np.float16, seed=3)
    result = optimize(model, verify=False)
    assert [a.rule for a in result.report.applied] == ["concat_bn"]
    assert_fp16_no_worse(model, result.model)


# ---- one negative per refusal -------------------------------------------------------------


def test_refuses_concat_on_another_axis():
    assert_refused(concat_on_axis_two_model(), Reason.CONCAT_AXIS)


def test_refuses_branch_not_from_a_foldable_node():
    result = assert_refused(branch_through_relu_model(), Reason.BRANCH_NOT_FOLDABLE)
    assert "Relu" in result.report.refused[0].detail


def test_concat_of_activations_only_is_no_site():
    b = GraphBuilder(seed=6)
    x = b.input("x", ["N", 3, 6, 6])
    b.output(b.bn(_concat(b, [b.node("Relu", [x]), b.node("Sigmoid", [x])]), 6, name="bn"))
    assert_refused(b.build(), Reason.NO_FOLDABLE_NEIGHBOUR)


def test_refuses_producer_read_elsewhere():
    b = GraphBuilder(seed=7)
    c1, c2 = _branches(b)
    b.output(b.bn(_concat(b, [c1, c2]), 6, name="bn"))
    b.output(b.node("Relu", [c1]))
    assert_refused(b.build(), Reason.PRODUCER_HAS_OTHER_CONSUMERS)


def test_refuses_same_branch_twice():
    b = GraphBuilder(seed=8)
    c1 = b.conv(b.input("x", ["N", 3, 6, 6]), 3)
    b.output(b.bn(_concat(b, [c1, c1]), 6, name="bn"))
    assert_refused(b.build(), Reason.PRODUCER_HAS_OTHER_CONSUMERS)


def test_refuses_concat_output_that_is_a_graph_output():
    b = GraphBuilder(seed=9)
    cat = _concat(b, _branches(b))
    b.output(b.bn(cat, 6, name="bn"))
    b.output(cat)
    assert_refused(b.build(), Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT)


def test_refuses_weight_not_constant():
    b = GraphBuilder(seed=10)
    x = b.input("x", ["N", 3, 6, 6])
    b.inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3, 3, 3]))
    c2 = b.node("Conv", [x, "w"])
    b.output(b.bn(_concat(b, [b.conv(x, 4), c2]), 6, name="bn"))
    assert_refused(b.build(), Reason.WEIGHT_NOT_CONSTANT, runnable=False)


def test_refuses_parameters_for_other_channel_count():
    b = GraphBuilder(seed=11)
    b.output(b.bn(_concat(b, _branches(b)), 5, name="bn"))
    assert_refused(b.build(), Reason.SHAPE_MISMATCH, runnable=False)


def test_refuses_training_mode():
    b = GraphBuilder(seed=12)
    b.output(b.bn(_concat(b, _branches(b)), 6, name="bn", training_mode=1))
    assert_refused(b.build(), Reason.TRAINING_MODE, runnable=False)


def test_chain_after_concat_matches_unfolded():
    b = GraphBuilder(seed=13)
    t = b.bn(_concat(b, _branches(b)), 6, name="bn1")
    b.output(b.bn(t, 6, name="bn2"))
    model = b.build()
    result = optimize(model, verify=False)
    assert op_count(result.model, "BatchNormalization") == 0
    assert_equivalent(model, result.model)


def test_affine_conv_into_a_conv_renamed_by_concat_bn_verifies():
    """Regression (fuzz): concat_bn renames the Conv output it changes; a later affine_conv into that Conv
    named the fresh tensor as its unchanged output, which verification then could not find in the original."""
    b = GraphBuilder(seed=14)
    x = b.input("x", ["N", 3, 6, 6])
    scaled = b.node("Mul", [b.node("Relu", [x]), b.init(signed(b.rng, [1, 3, 1, 1]))], name="mul")
    scaled = b.node("Add", [scaled, b.init(signed(b.rng, [1, 3, 1, 1]))], name="add")  # the Mul folds in pass 2
    b.channels[scaled] = 3
    y = b.bn(_concat(b, [b.conv(scaled, 4, k=3), b.conv_transpose(b.conv(x, 3, k=5), 2, k=3)]), 6, name="bn")
    b.output(y)
    model = b.build()
    result = optimize(model)
    assert sorted(a.rule for a in result.report.applied) == ["affine_conv", "affine_conv", "concat_bn"]
    assert result.report.verification.status == "passed" and not result.report.reverted
    assert_equivalent(model, result.model)


# ---- the cases the tier without verification folds (tests/fold/rules/test_safe_without_verification.py) -----

def _refused_variant(kind: str) -> onnx.ModelProto:
    """Concat(Conv, ConvTranspose) -> BN, spoilt by *kind*: "read" (a Conv output read again), "output" (the
    Concat output a graph output), "same" (one Conv twice), "relu" (no foldable branch), "channels" (BN over 5),
    "weight" (a Conv weight fed at run time), "training" (BN in training mode)."""
    b = GraphBuilder(seed=7)
    x = b.input("x", ["N", 3, 6, 6]) if kind in ("same", "relu", "weight") else None
    if kind == "same":
        c = b.conv(x, 3)
        branches = [c, c]
    elif kind == "relu":
        branches = [b.node("Relu", [x]), b.node("Sigmoid", [x])]
    elif kind == "weight":
        b.inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3, 3, 3]))
        branches = [b.conv(x, 4), b.node("Conv", [x, "w"])]
    else:
        branches = _branches(b)
    cat = _concat(b, branches)
    b.output(b.bn(cat, 5 if kind == "channels" else 6, name="bn", training_mode=int(kind == "training")))
    if kind == "read":
        b.output(b.node("Relu", [branches[0]]))
    if kind == "output":
        b.output(cat)
    return b.build()


SAFETY_CASES = {
    "concat_bn-axis-1": SafetyCase(concat_bn_model, "concat_bn"),
    "concat_bn-axis-minus-3": SafetyCase(functools.partial(concat_bn_model, -3), "concat_bn"),
    "concat_bn-three-segments-mul-add": SafetyCase(concat_mul_add_model, "concat_bn"),
    "concat_bn-gemms": SafetyCase(concat_of_gemms_model, "concat_bn"),
    "concat_bn-fp16": SafetyCase(functools.partial(concat_bn_model, relu=False, dtype=np.float16, seed=3),
                                 "concat_bn"),
    "concat_bn-axis-2": SafetyCase(concat_on_axis_two_model, "concat_bn", Reason.CONCAT_AXIS),
    "concat_bn-branch-relu": SafetyCase(branch_through_relu_model, "concat_bn", Reason.BRANCH_NOT_FOLDABLE),
    "concat_bn-producer-read": SafetyCase(functools.partial(_refused_variant, "read"), "concat_bn",
                                          Reason.PRODUCER_HAS_OTHER_CONSUMERS),
    "concat_bn-same-branch": SafetyCase(functools.partial(_refused_variant, "same"), "concat_bn",
                                        Reason.PRODUCER_HAS_OTHER_CONSUMERS),
    "concat_bn-concat-output": SafetyCase(functools.partial(_refused_variant, "output"), "concat_bn",
                                          Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT),
    "concat_bn-weight-fed": SafetyCase(functools.partial(_refused_variant, "weight"), "concat_bn",
                                       Reason.WEIGHT_NOT_CONSTANT),
    "concat_bn-channels": SafetyCase(functools.partial(_refused_variant, "channels"), "concat_bn",
                                     Reason.SHAPE_MISMATCH, runnable=False),
    "concat_bn-training": SafetyCase(functools.partial(_refused_variant, "training"), "concat_bn",
                                     Reason.TRAINING_MODE, runnable=False),
    "concat_bn-activations-only": SafetyCase(functools.partial(_refused_variant, "relu"), None,
                                             Reason.NO_FOLDABLE_NEIGHBOUR),
}
