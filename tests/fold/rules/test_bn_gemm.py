"""bn_gemm: BatchNorm1d (or a per-column affine) before a Linear layer folds into its Gemm, or turns a rank-2
MatMul into the Gemm with the folded weight and bias."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, assert_fp16_no_worse, assert_refused
from tests.fold.rules._affine_helpers import assert_folds, assert_site_refused, signed
from tests.fold.rules.safety import SafetyCase

K, M = 5, 3


GEMMS = [(0, 1.0, 1.0, [M]), (1, 0.5, 2.0, [1, M]), (1, 1.5, 1.0, None), (0, 1.0, 0.25, [2, M])]


def bn_gemm_model(trans_b: int, alpha: float, beta: float, bias: list[int] | None) -> onnx.ModelProto:
    """BN "bn" over [2, K] -> Gemm "fc" with *trans_b*, *alpha*, *beta* and a bias of shape *bias*."""
    b = GraphBuilder(seed=0)
    z = b.bn(b.input("x", [2, K]), K, name="bn")
    inputs = [z, b.init(b.weight([M, K] if trans_b else [K, M]))]
    if bias is not None:
        inputs.append(b.init(signed(b.rng, bias)))
    b.output(b.node("Gemm", inputs, transB=trans_b, alpha=alpha, beta=beta, name="fc"))
    return b.build()


def bn_matmul_model() -> onnx.ModelProto:
    b = GraphBuilder(seed=1)
    z = b.bn(b.input("x", ["N", K]), K, name="bn")
    b.output(b.node("MatMul", [z, b.init(b.weight([K, M]))], name="fc"))
    return b.build()


def affine_gemm_model(op: str) -> onnx.ModelProto:
    b = GraphBuilder(seed=2)
    z = b.node(op, [b.input("x", ["N", K]), b.init(signed(b.rng, [K]))])
    b.output(b.node("Gemm", [z, b.init(b.weight([M, K]))], transB=1))
    return b.build()


def scale_rank3_matmul_model() -> onnx.ModelProto:
    b = GraphBuilder(seed=3)
    z = b.node("Mul", [b.input("x", ["N", 4, K]), b.init(signed(b.rng, [1, 1, K]))])
    b.output(b.node("MatMul", [z, b.init(b.weight([K, M]))]))
    return b.build()


def fp16_bn_gemm_model() -> onnx.ModelProto:
    b = GraphBuilder(seed=4, dtype=np.float16)
    z = b.bn(b.input("x", ["N", K]), K, name="bn")
    b.output(b.node("Gemm", [z, b.init(b.weight([K, M])), b.init(b.weight([M]))]))
    return b.build()


def trans_a_model() -> onnx.ModelProto:
    b = GraphBuilder(seed=6)
    z = b.bn(b.input("x", [K, K]), K, name="bn")
    b.output(b.node("Gemm", [z, b.init(b.weight([K, M]))], transA=1))
    return b.build()


@pytest.mark.parametrize("trans_b,alpha,beta,bias", GEMMS)
def test_bn_before_gemm(trans_b, alpha, beta, bias):
    result = assert_folds(bn_gemm_model(trans_b, alpha, beta, bias), ["bn_gemm"], ["Gemm"])
    assert result.model.graph.node[0].name == "fc"


def test_bn_before_rank2_matmul_becomes_gemm():
    model = bn_matmul_model()
    y = model.graph.output[0].name
    result = assert_folds(model, ["bn_gemm"], ["Gemm"])
    assert result.model.graph.node[0].output[0] == y


@pytest.mark.parametrize("op", ["Mul", "Add", "Sub", "Div"])
def test_affine_before_gemm(op):
    assert_folds(affine_gemm_model(op), ["bn_gemm"], ["Gemm"])


def test_scale_before_rank3_matmul_keeps_the_matmul():
    assert_folds(scale_rank3_matmul_model(), ["bn_gemm"], ["MatMul"])


def test_fp16_bn_before_gemm():
    model = fp16_bn_gemm_model()
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
    assert_refused(trans_a_model(), Reason.CONSUMER_LAYOUT)


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


# ---- the cases the tier without verification folds (tests/fold/rules/test_safe_without_verification.py) -----

def _refused(kind: str) -> onnx.ModelProto:
    """x -> BN (or Add / Mul "site") -> MatMul or Gemm, spoilt by *kind*: "rank3" (BN before a rank-3 MatMul),
    "shift3" (an Add before one), "rank" (no input shape), "read" (the BN read again), "output" (the BN a graph
    output), "widen" (a [K] constant on [N, 1]), "weight" (the Gemm weight fed), "training" (training mode)."""
    b = GraphBuilder(seed=8)
    if kind == "rank":
        b.inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
    x = "x" if kind == "rank" else b.input("x", {"rank3": ["N", K, K], "shift3": ["N", 4, K],
                                                 "widen": ["N", 1]}.get(kind, ["N", K]))
    if kind in ("shift3", "rank", "widen"):
        z = b.node({"shift3": "Add"}.get(kind, "Mul"), [x, b.init(signed(b.rng, [K]))], name="site")
    else:
        z = b.bn(x, K, name="bn", training_mode=int(kind == "training"))
    if kind == "weight":
        b.inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [K, M]))
    weight = "w" if kind == "weight" else b.init(b.weight([K, M]))
    b.output(b.node("MatMul" if kind in ("rank3", "shift3", "rank") else "Gemm", [z, weight]))
    if kind == "read":
        b.output(b.node("Relu", [z]))
    if kind == "output":
        b.output(z)
    return b.build()


def _case(kind: str, reason: Reason, runnable: bool = True) -> SafetyCase:
    return SafetyCase(functools.partial(_refused, kind), "bn_gemm", reason, runnable)


SAFETY_CASES = {
    **{f"bn_gemm-t{t}-a{a}-b{beta}-{bias}": SafetyCase(functools.partial(bn_gemm_model, t, a, beta, bias), "bn_gemm")
       for t, a, beta, bias in GEMMS},
    "bn_gemm-matmul": SafetyCase(bn_matmul_model, "bn_gemm"),
    **{f"bn_gemm-{op}": SafetyCase(functools.partial(affine_gemm_model, op), "bn_gemm") for op in ("Sub", "Div")},
    "bn_gemm-rank3-scale": SafetyCase(scale_rank3_matmul_model, "bn_gemm"),
    "bn_gemm-fp16": SafetyCase(fp16_bn_gemm_model, "bn_gemm"),
    "bn_gemm-trans-a": SafetyCase(trans_a_model, "bn_gemm", Reason.CONSUMER_LAYOUT),
    "bn_gemm-rank3-bn": _case("rank3", Reason.CONSUMER_LAYOUT),
    "bn_gemm-rank3-shift": _case("shift3", Reason.CONSUMER_LAYOUT),
    "bn_gemm-rank": _case("rank", Reason.RANK_UNKNOWN),
    "bn_gemm-read": _case("read", Reason.BN_HAS_OTHER_CONSUMERS),
    "bn_gemm-output": _case("output", Reason.BN_OUTPUT_IS_GRAPH_OUTPUT),
    "bn_gemm-widen": _case("widen", Reason.SHAPE_MISMATCH),
    "bn_gemm-weight": _case("weight", Reason.WEIGHT_NOT_CONSTANT),
    "bn_gemm-training": _case("training", Reason.TRAINING_MODE, runnable=False),  # ORT: training BN needs 3 outputs
}
