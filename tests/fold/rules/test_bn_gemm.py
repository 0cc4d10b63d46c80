"""bn_gemm: BatchNorm1d (or a per-column affine) before a Linear layer folds into its Gemm, or turns a rank-2
MatMul into the Gemm with the folded weight and bias."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, assert_fp16_no_worse, assert_refused
from tests.fold.rules._affine_helpers import assert_folds, assert_site_refused, signed

K, M = 5, 3


@pytest.mark.parametrize("trans_b,alpha,beta,bias", [(0, 1.0, 1.0, [M]), (1, 0.5, 2.0, [1, M]), (1, 1.5, 1.0, None),
                                                     (0, 1.0, 0.25, [2, M])])
def test_bn_before_gemm(trans_b, alpha, beta, bias):
    b = GraphBuilder(seed=0)
    z = b.bn(b.input("x", [2, K]), K, name="bn")
    inputs = [z, b.init(b.weight([M, K] if trans_b else [K, M]))]
    if bias is not None:
        inputs.append(b.init(signed(b.rng, bias)))
    b.output(b.node("Gemm", inputs, transB=trans_b, alpha=alpha, beta=beta, name="fc"))
    result = assert_folds(b.build(), ["bn_gemm"], ["Gemm"])
    assert result.model.graph.node[0].name == "fc"


def test_bn_before_rank2_matmul_becomes_gemm():
    b = GraphBuilder(seed=1)
    z = b.bn(b.input("x", ["N", K]), K, name="bn")
    y = b.output(b.node("MatMul", [z, b.init(b.weight([K, M]))], name="fc"))
    result = assert_folds(b.build(), ["bn_gemm"], ["Gemm"])
    assert result.model.graph.node[0].output[0] == y


@pytest.mark.parametrize("op", ["Mul", "Add", "Sub", "Div"])
def test_affine_before_gemm(op):
    b = GraphBuilder(seed=2)
    z = b.node(op, [b.input("x", ["N", K]), b.init(signed(b.rng, [K]))])
    b.output(b.node("Gemm", [z, b.init(b.weight([M, K]))], transB=1))
    assert_folds(b.build(), ["bn_gemm"], ["Gemm"])


def test_scale_before_rank3_matmul_keeps_the_matmul():
    b = GraphBuilder(seed=3)
    z = b.node("Mul", [b.input("x", ["N", 4, K]), b.init(signed(b.rng, [1, 1, K]))])
    b.output(b.node("MatMul", [z, b.init(b.weight([K, M]))]))
    assert_folds(b.build(), ["bn_gemm"], ["MatMul"])


def test_fp16_bn_before_gemm():
    b = GraphBuilder(seed=4, dtype=np.float16)
    z = b.bn(b.input("x", ["N", K]), K, name="bn")
    b.output(b.node("Gemm", [z, b.init(b.weight([K, M])), b.init(b.weight([M]))]))
    model = b.build()
    result = optimize(model, verify=False)
    assert [a.rule for a in result.report.applied] == ["bn_gemm"]
    assert_fp16_no_worse(model, result.model)


def test_chain_bn_then_mul_before_gemm_matches_unfolded():
    b = GraphBuilder(seed=5)
    z = b.node("Mul", [b.bn(b.input("x", ["N", K]), K), b.init(signed(b.rng, [K]))])
    b.output(b.node("Gemm", [z, b.init(b.weight([K, M]))]))
    model = b.build()
    result = assert_folds(model, ["bn_gemm", "bn_gemm"], ["Gemm"])
    assert_equivalent(model, result.model)


# ---- one negative per refusal -------------------------------------------------------------


def test_refuses_gemm_with_trans_a():
    b = GraphBuilder(seed=6)
    z = b.bn(b.input("x", [K, K]), K, name="bn")
    b.output(b.node("Gemm", [z, b.init(b.weight([K, M]))], transA=1))
    assert_refused(b.build(), Reason.CONSUMER_LAYOUT)


def test_refuses_bn_before_rank3_matmul():
    b = GraphBuilder(seed=7)
    z = b.bn(b.input("x", ["N", K, K]), K, name="bn")
    b.output(b.node("MatMul", [z, b.init(b.weight([K, M]))]))
    assert_refused(b.build(), Reason.CONSUMER_LAYOUT)


def test_refuses_shift_before_rank3_matmul():
    b = GraphBuilder(seed=8)
    z = b.node("Add", [b.input("x", ["N", 4, K]), b.init(signed(b.rng, [K]))], name="site")
    b.output(b.node("MatMul", [z, b.init(b.weight([K, M]))]))
    assert_site_refused(b.build(), "site", Reason.CONSUMER_LAYOUT)


def test_refuses_unknown_rank():
    b = GraphBuilder(seed=9)
    b.inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
    z = b.node("Mul", ["x", b.init(signed(b.rng, [K]))], name="site")
    b.output(b.node("MatMul", [z, b.init(b.weight([K, M]))]))
    assert_site_refused(b.build(), "site", Reason.RANK_UNKNOWN, runnable=False)


def test_refuses_bn_output_read_elsewhere():
    b = GraphBuilder(seed=10)
    z = b.bn(b.input("x", ["N", K]), K, name="bn")
    b.output(b.node("Gemm", [z, b.init(b.weight([K, M]))]))
    b.output(b.node("Relu", [z]))
    assert_refused(b.build(), Reason.BN_HAS_OTHER_CONSUMERS)


def test_refuses_bn_output_that_is_a_graph_output():
    b = GraphBuilder(seed=11)
    z = b.bn(b.input("x", ["N", K]), K, name="bn")
    b.output(b.node("Gemm", [z, b.init(b.weight([K, M]))]))
    b.output(z)
    assert_refused(b.build(), Reason.BN_OUTPUT_IS_GRAPH_OUTPUT)


def test_refuses_constant_that_widens_the_columns():
    b = GraphBuilder(seed=12)
    z = b.node("Mul", [b.input("x", ["N", 1]), b.init(signed(b.rng, [K]))], name="site")
    b.output(b.node("Gemm", [z, b.init(b.weight([K, M]))]))
    assert_site_refused(b.build(), "site", Reason.SHAPE_MISMATCH)


def test_refuses_weight_not_constant():
    b = GraphBuilder(seed=13)
    b.inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [K, M]))
    z = b.bn(b.input("x", ["N", K]), K, name="bn")
    b.output(b.node("Gemm", [z, "w"]))
    assert_refused(b.build(), Reason.WEIGHT_NOT_CONSTANT, runnable=False)


def test_refuses_training_mode():
    b = GraphBuilder(seed=14)
    z = b.bn(b.input("x", ["N", K]), K, name="bn", training_mode=1)
    b.output(b.node("Gemm", [z, b.init(b.weight([K, M]))]))
    assert_refused(b.build(), Reason.TRAINING_MODE, runnable=False)
