"""Training form: a BatchNormalization of opsets 7-13 with more than one output slot normalises with the
batch's statistics (the spec says so; onnxruntime runs it so), whether or not the extra outputs are read.
No rule may fold it: it is refused statically as training_mode, never left to verification to catch."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import helper

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_refused, feeds_for, run
from tests.fold.rules.safety import SafetyCase

FIVE = ["y", "running_mean", "running_var", "saved_mean", "saved_var"]


def _producer(b: GraphBuilder, kind: str) -> tuple[str, int]:
    """(the tensor the BN normalizes, its channel count) for each rule's pattern."""
    if kind == "conv_bn":
        return b.conv(b.input("x", [2, 3, 6, 6]), 4, bias=False, name="conv"), 4
    if kind == "convtranspose_bn":
        return b.conv_transpose(b.input("x", [2, 4, 5, 5]), 6, group=2, name="deconv"), 6
    if kind == "gemm_bn":
        bias = b.init(np.zeros(4, np.float32))  # C is required before opset 11
        return b.node("Gemm", [b.input("a", [3, 5]), b.init(b.weight([5, 4])), bias], name="gemm"), 4
    if kind == "matmul_bn":
        return b.node("MatMul", [b.input("a", [3, 5]), b.init(b.weight([5, 4]))], name="mm"), 4
    return b.input("x", [2, 4, 6, 6]), 4  # bn_conv: the BN reads the input, an unpadded Conv reads the BN


def training_model(kind: str, opset: int, outputs: list[str]) -> onnx.ModelProto:
    b = GraphBuilder(opset=opset, seed=3)
    x, channels = _producer(b, kind)
    names = [b.init(p) for p in b.bn_params(channels)]
    b.nodes.append(helper.make_node("BatchNormalization", [x, *names], outputs, name="bn"))
    y = outputs[0]
    if kind == "bn_conv":
        b.channels[y] = channels
        y = b.conv(y, 5, 1, name="conv")
    b.output(y, shape=None)
    return b.build(ir_version=3 if opset < 8 else 8)


KINDS = ["conv_bn", "convtranspose_bn", "gemm_bn", "matmul_bn", "bn_conv"]


@pytest.mark.parametrize("opset", [7, 9, 13])
@pytest.mark.parametrize("kind", KINDS)
def test_five_named_outputs_none_read_are_refused(kind, opset):
    """Opset-9 BN with five named outputs, none of them read: onnxruntime still uses batch statistics."""
    result = assert_refused(training_model(kind, opset, FIVE), Reason.TRAINING_MODE)  # runs both in ORT
    assert f"opset {opset} with 5 outputs" in result.report.refused[0].detail
    assert result.report.refused[0].rule == kind


def test_the_refusal_matters_training_form_is_far_from_the_inference_form():
    """The same BN with one output (inference) vs five (training): a fold would be off by its magnitude."""
    training, inference = training_model("conv_bn", 9, FIVE), training_model("conv_bn", 9, ["y"])
    feeds = feeds_for(training)
    (a,), (b,) = run(training, feeds), run(inference, feeds)
    assert np.abs(a - b).max() > 0.3 * np.abs(b).max()
    folded = optimize(inference, verify=False)
    assert [f.rule for f in folded.report.applied] == ["conv_bn"]  # the inference form does fold


def test_onnxruntimes_optional_output_case_is_refused():
    """onnxruntime's "don't fuse Conv with BN with optional outputs": Conv without bias -> BN with one added
    output named after the mean input. The opset-9 schema rejects two outputs, so ORT can't run the file."""
    b = GraphBuilder(opset=9)
    conv = b.conv(b.input("x", ["N", 3, 6, 6]), 4, bias=False, name="conv")
    names = [b.init(p) for p in b.bn_params(4)]
    b.nodes.append(helper.make_node("BatchNormalization", [conv, *names], ["y", f"{names[2]}.output"], name="bn"))
    b.output("y", shape=None)
    result = assert_refused(b.build(), Reason.TRAINING_MODE, runnable=False)
    assert "2 outputs" in result.report.refused[0].detail


def test_running_statistics_only_and_empty_slots_are_training_form():
    """[y, mean, var, '', '']: the saved statistics left empty; onnxruntime runs it in training mode."""
    assert_refused(training_model("conv_bn", 9, ["y", "rm", "rv", "", ""]), Reason.TRAINING_MODE)


def test_extra_slots_all_empty_still_count():
    """[y, '', '', '', '']: every extra slot empty is still more than one output (onnxruntime's own count).
    Not run: onnxruntime 1.2x crashes on this node."""
    assert_refused(training_model("gemm_bn", 9, ["y", "", "", "", ""]), Reason.TRAINING_MODE, runnable=False)


def test_extra_output_read_downstream_is_training_mode_not_extra_outputs_used():
    b = GraphBuilder(opset=9, seed=4)
    conv = b.conv(b.input("x", [2, 3, 6, 6]), 4, name="conv")
    names = [b.init(p) for p in b.bn_params(4)]
    b.nodes.append(helper.make_node("BatchNormalization", [conv, *names], FIVE, name="bn"))
    b.output("y", shape=None)
    b.output(b.node("Neg", ["running_mean"]), shape=None)
    assert_refused(b.build(), Reason.TRAINING_MODE)


def test_opset14_training_mode_attribute_is_refused_and_inference_form_folds():
    for opset in (14, 15):
        b = GraphBuilder(opset=opset, seed=5)
        conv = b.conv(b.input("x", [2, 3, 6, 6]), 4, name="conv")
        b.output(b.bn(conv, name="bn", training_mode=1, n_out=3), shape=None)
        result = assert_refused(b.build(), Reason.TRAINING_MODE)
        assert result.report.refused[0].detail == "training_mode=1"
    b = GraphBuilder(opset=14, seed=5)
    b.output(b.bn(b.conv(b.input("x", [2, 3, 6, 6]), 4), training_mode=0), shape=None)
    assert [f.rule for f in optimize(b.build(), verify=False).report.applied] == ["conv_bn"]


# ---- the cases the tier without verification folds (tests/fold/rules/test_safe_without_verification.py) -----

SAFETY_CASES = {
    **{f"training-{kind}-opset{opset}": SafetyCase(functools.partial(training_model, kind, opset, FIVE), kind,
                                                   Reason.TRAINING_MODE)
       for kind in KINDS for opset in (7, 9, 13)},
    "training-running-stats-only": SafetyCase(functools.partial(training_model, "conv_bn", 9, FIVE[:3] + ["", ""]),
                                              "conv_bn", Reason.TRAINING_MODE),
    "inference-form-opset9": SafetyCase(functools.partial(training_model, "conv_bn", 9, ["y"]), "conv_bn"),
}


def test_training_mode_attribute_before_opset14_is_refused_too():
    """An opset-13 node carrying opset 14's training_mode=1 (invalid, so not run): refused, never folded."""
    b = GraphBuilder(opset=13, seed=6)
    b.output(b.bn(b.conv(b.input("x", [2, 3, 6, 6]), 4), training_mode=1), shape=None)
    result = assert_refused(b.build(), Reason.TRAINING_MODE, runnable=False)
    assert result.report.refused[0].detail == "training_mode=1"
