"""add_bn: a BN (or per-channel affine) after an Add of two Conv/ConvTranspose/Gemm outputs scales both and
adds the shift to one."""

from __future__ import annotations

import numpy as np

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_fp16_no_worse, assert_refused
from tests.fold.rules._affine_helpers import assert_folds, signed

C = 4


def _x(b: GraphBuilder) -> str:
    return b.input("x", ["N", 3, 6, 6])


def test_bn_after_add_of_two_convs():
    b = GraphBuilder(seed=0)
    x = _x(b)
    s = b.node("Add", [b.conv(x, C), b.conv(x, C, bias=False)], name="sum")
    b.output(b.node("Relu", [b.bn(s, C, name="bn")]))
    result = assert_folds(b.build(), ["add_bn"], ["Conv", "Conv", "Add", "Relu"])
    assert result.model.graph.node[2].output[0] == "bn_out"


def test_broadcast_branch_and_conv_transpose():
    """[N, C, 4, 4] + [N, C, 1, 1]: the map is per channel, so spatial broadcasting is fine."""
    b = GraphBuilder(seed=1)
    x = _x(b)
    small = b.conv(x, C, k=6)
    big = b.conv_transpose(b.conv(x, 3, k=5), C, k=3)
    b.output(b.bn(b.node("Add", [big, small]), C, name="bn"))
    assert_folds(b.build(), ["add_bn"], ["Conv", "Conv", "ConvTranspose", "Add"])


def test_affine_mul_add_after_add_of_gemms():
    b = GraphBuilder(seed=2)
    a = b.input("a", ["N", 5])
    g1 = b.node("Gemm", [a, b.init(b.weight([5, C])), b.init(b.weight([C]))], alpha=0.5, beta=2.0)
    g2 = b.node("Gemm", [a, b.init(b.weight([C, 5]))], transB=1)
    z = b.node("Mul", [b.node("Add", [g1, g2]), b.init(signed(b.rng, [C]))])
    b.output(b.node("Sub", [z, b.init(signed(b.rng, [1, C]))]))
    assert_folds(b.build(), ["add_bn", "add_bn"], ["Gemm", "Gemm", "Add"])


def test_fp16():
    b = GraphBuilder(seed=3, dtype=np.float16)
    x = _x(b)
    b.output(b.bn(b.node("Add", [b.conv(x, C), b.conv(x, C)]), C, name="bn"))
    model = b.build()
    result = optimize(model, verify=False)
    assert [a.rule for a in result.report.applied] == ["add_bn"]
    assert_fp16_no_worse(model, result.model)


# ---- one negative per refusal -------------------------------------------------------------


def test_refuses_branch_from_graph_input():
    b = GraphBuilder(seed=4)
    x = b.input("x", ["N", C, 6, 6])
    b.output(b.bn(b.node("Add", [b.conv(x, C, k=1), x]), C, name="bn"))
    assert_refused(b.build(), Reason.BRANCH_NOT_FOLDABLE)


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
