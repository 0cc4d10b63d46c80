"""add_bn: a BN (or per-channel affine) after an Add of two Conv/ConvTranspose/Gemm outputs scales both and
adds the shift to one."""

from __future__ import annotations

import functools

import numpy as np
import onnx

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_fp16_no_worse, assert_refused
from tests.fold.rules._affine_helpers import assert_folds, signed
from tests.fold.rules.safety import SafetyCase

C = 4


def _x(b: GraphBuilder) -> str:
    return b.input("x", ["N", 3, 6, 6])


def add_bn_model(*, dtype=np.float32, seed: int = 0, relu: bool = True, bias: bool = False) -> onnx.ModelProto:
    """Conv + Conv (the second with *bias*) -> BN "bn" (-> Relu)."""
    b = GraphBuilder(seed=seed, dtype=dtype)
    x = _x(b)
    y = b.bn(b.node("Add", [b.conv(x, C), b.conv(x, C, bias=bias)], name="sum"), C, name="bn")
    b.output(b.node("Relu", [y]) if relu else y)
    return b.build()


def broadcast_branch_model() -> onnx.ModelProto:
    """ConvTranspose [N, C, 4, 4] + Conv [N, C, 1, 1] -> BN."""
    b = GraphBuilder(seed=1)
    x = _x(b)
    small = b.conv(x, C, k=6)
    big = b.conv_transpose(b.conv(x, 3, k=5), C, k=3)
    b.output(b.bn(b.node("Add", [big, small]), C, name="bn"))
    return b.build()


def gemms_mul_sub_model() -> onnx.ModelProto:
    """Gemm + Gemm -> Mul -> Sub: a per-column affine after the sum."""
    b = GraphBuilder(seed=2)
    a = b.input("a", ["N", 5])
    g1 = b.node("Gemm", [a, b.init(b.weight([5, C])), b.init(b.weight([C]))], alpha=0.5, beta=2.0)
    g2 = b.node("Gemm", [a, b.init(b.weight([C, 5]))], transB=1)
    z = b.node("Mul", [b.node("Add", [g1, g2]), b.init(signed(b.rng, [C]))])
    b.output(b.node("Sub", [z, b.init(signed(b.rng, [1, C]))]))
    return b.build()


def branch_from_graph_input_model() -> onnx.ModelProto:
    b = GraphBuilder(seed=4)
    x = b.input("x", ["N", C, 6, 6])
    b.output(b.bn(b.node("Add", [b.conv(x, C, k=1), x]), C, name="bn"))
    return b.build()


def test_bn_after_add_of_two_convs():
    result = assert_folds(add_bn_model(), ["add_bn"], ["Conv", "Conv", "Add", "Relu"])
    assert result.model.graph.node[2].output[0] == "bn_out"


def test_broadcast_branch_and_conv_transpose():
    """[N, C, 4, 4] + [N, C, 1, 1]: the map is per channel, so spatial broadcasting is fine."""
    assert_folds(broadcast_branch_model(), ["add_bn"], ["Conv", "Conv", "ConvTranspose", "Add"])


def test_affine_mul_add_after_add_of_gemms():
    assert_folds(gemms_mul_sub_model(), ["add_bn", "add_bn"], ["Gemm", "Gemm", "Add"])


def test_fp16():
    model = add_bn_model(dtype=np.float16, seed=3, relu=False, bias=True)
    result = optimize(model, verify=False)
    assert [a.rule for a in result.report.applied] == ["add_bn"]
    assert_fp16_no_worse(model, result.model)


# ---- one negative per refusal -------------------------------------------------------------


def test_refuses_branch_from_graph_input():
    assert_refused(branch_from_graph_input_model(), Reason.BRANCH_NOT_FOLDABLE)


def test_refuses_same_conv_added_to_itself():
    b = GraphBuilder(seed=5)
    c = b.conv(_x(b), C)
    b.output(b.bn(b.node("Add", [c, c]), C, name="bn"))
    assert_refused(b.build(), Reason.PRODUCER_HAS_OTHER_CONSUMERS)


def test_refuses_branch_with_one_broadcast_channel():
    b = GraphBuilder(seed=6)
    x = _x(b)
    b.output(b.bn(b.node("Add", [b.conv(x, C), b.conv(x, 1)]), C, name="bn"))
    assert_refused(b.build(), Reason.SHAPE_MISMATCH)


def test_refuses_sum_that_is_a_graph_output():
    b = GraphBuilder(seed=7)
    x = _x(b)
    s = b.node("Add", [b.conv(x, C), b.conv(x, C)])
    b.output(b.bn(s, C, name="bn"))
    b.output(s)
    assert_refused(b.build(), Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT)


def test_refuses_overflow():
    b = GraphBuilder(seed=8)
    x = _x(b)
    params = b.bn_params(C)
    params[0] = np.full(C, 3e38, np.float32)
    params[3] = np.full(C, 1e-6, np.float32)
    b.output(b.bn(b.node("Add", [b.conv(x, C), b.conv(x, C)]), C, params=params, name="bn"))
    assert_refused(b.build(), Reason.FOLD_OVERFLOW, runnable=False)


# ---- the cases the tier without verification folds (tests/fold/rules/test_safe_without_verification.py) -----

def _refused_variant(kind: str) -> onnx.ModelProto:
    """Conv + Conv -> BN, spoilt by *kind*: "same" (one Conv added to itself), "narrow" (a one-channel branch),
    "output" (the sum a graph output), "overflow" (a BN scale of 3e38 / sqrt(1e-6))."""
    b = GraphBuilder(seed=5)
    x = _x(b)
    c = b.conv(x, C)
    other = {"same": c, "narrow": b.conv(x, 1)}.get(kind) or b.conv(x, C)
    total = b.node("Add", [c, other])
    params = b.bn_params(C)
    if kind == "overflow":
        params[0], params[3] = np.full(C, 3e38, np.float32), np.full(C, 1e-6, np.float32)
    b.output(b.bn(total, C, params=params, name="bn"))
    if kind == "output":
        b.output(total)
    return b.build()


SAFETY_CASES = {
    "add_bn-two-convs": SafetyCase(add_bn_model, "add_bn"),
    "add_bn-broadcast-convtranspose": SafetyCase(broadcast_branch_model, "add_bn"),
    "add_bn-gemms-mul-sub": SafetyCase(gemms_mul_sub_model, "add_bn"),
    "add_bn-fp16": SafetyCase(functools.partial(add_bn_model, dtype=np.float16, seed=3, relu=False, bias=True),
                              "add_bn"),
    "add_bn-graph-input-branch": SafetyCase(branch_from_graph_input_model, "add_bn", Reason.BRANCH_NOT_FOLDABLE),
    "add_bn-same-conv": SafetyCase(functools.partial(_refused_variant, "same"), "add_bn",
                                   Reason.PRODUCER_HAS_OTHER_CONSUMERS),
    "add_bn-narrow-branch": SafetyCase(functools.partial(_refused_variant, "narrow"), "add_bn", Reason.SHAPE_MISMATCH),
    "add_bn-sum-output": SafetyCase(functools.partial(_refused_variant, "output"), "add_bn",
                                    Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT),
    "add_bn-overflow": SafetyCase(functools.partial(_refused_variant, "overflow"), "add_bn", Reason.FOLD_OVERFLOW,
                                  runnable=False),  # the original overflows too
}
