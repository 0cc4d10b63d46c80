"""gemm_bn: Gemm -> BatchNormalization over [N, C] folds into B and C (beta becomes 1, alpha stays)."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import onnx
import pytest
from onnx import helper

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, assert_fp16_no_worse, assert_refused, op_count
from tests.fold.rules.safety import SafetyCase

M, K, N = 3, 5, 4
C_SHAPES = {"absent": None, "vector": [N], "row": [1, N], "scalar": [], "one": [1], "matrix": [M, N],
            "column": [M, 1]}


def gemm_bn_model(*, trans_a: int = 0, trans_b: int = 0, alpha: float = 1.0, beta: float = 1.0,
                  c_shape: list[int] | None = (N,), dtype=np.float32, epsilon: float = 1e-5) -> onnx.ModelProto:
    b = GraphBuilder(dtype=dtype, opset=17)
    a = b.input("a", [K, M] if trans_a else [M, K])
    inputs = [a, b.init(b.weight([N, K] if trans_b else [K, N], scale=0.5))]
    if c_shape is not None:
        inputs.append(b.init(b.rng.standard_normal(c_shape).astype(dtype)))
    y = b.node("Gemm", inputs, name="gemm", alpha=alpha, beta=beta, transA=trans_a, transB=trans_b)
    b.output(b.node("Relu", [b.bn(y, N, name="bn", epsilon=epsilon)], name="relu"))
    return b.build()


def fold(model: onnx.ModelProto, equivalent: bool = True) -> onnx.ModelProto:
    result = optimize(model, verify=False)
    assert op_count(result.model, "BatchNormalization") == 0
    assert [a.rule for a in result.report.applied] == ["gemm_bn"]
    assert result.report.refused == ()
    assert result.report.tensor_map == {"gemm_out": "bn_out"}
    if equivalent:
        assert_equivalent(model, result.model)
    return result.model


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize(("trans_a", "trans_b", "c_kind"), list(itertools.product((0, 1), (0, 1), C_SHAPES)))
def test_folds_every_transpose_and_bias_shape(trans_a, trans_b, c_kind):
    model = gemm_bn_model(trans_a=trans_a, trans_b=trans_b, alpha=0.7, beta=-1.3, c_shape=C_SHAPES[c_kind])
    folded = fold(model)
    gemm = next(n for n in folded.graph.node if n.op_type == "Gemm")
    assert gemm.name == "gemm" and gemm.output[0] == "bn_out" and len(gemm.input) == 3
    assert attrs(gemm) == pytest.approx({"alpha": 0.7, "beta": 1.0, "transA": trans_a, "transB": trans_b})


@pytest.mark.parametrize("c_kind", ["absent", "vector", "matrix"])
def test_default_alpha_beta_and_large_epsilon(c_kind):
    fold(gemm_bn_model(c_shape=C_SHAPES[c_kind], epsilon=0.1))


def test_bias_broadcast_shape_is_kept_when_wider_than_n():
    folded = fold(gemm_bn_model(c_shape=[M, 1]))
    gemm = next(n for n in folded.graph.node if n.op_type == "Gemm")
    c = next(t for t in folded.graph.initializer if t.name == gemm.input[2])
    assert list(c.dims) == [M, N]


def test_fp16_gemm_is_no_worse_than_unfolded():
    model = gemm_bn_model(trans_b=1, alpha=0.5, beta=2.0, dtype=np.float16)
    folded = fold(model, equivalent=False)
    assert {t.data_type for t in folded.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert_fp16_no_worse(model, folded)


def test_weight_fed_at_run_time_is_refused():
    b = GraphBuilder()
    a, w = b.input("a", ["N", K]), b.input("w", [K, N])
    b.output(b.bn(b.node("Gemm", [a, w]), N))
    assert_refused(b.build(), Reason.WEIGHT_NOT_CONSTANT)


def test_bias_computed_at_run_time_is_refused():
    b = GraphBuilder()
    a = b.input("a", ["N", K])
    bias = b.node("Neg", [b.init(np.ones(N, np.float32))])
    b.output(b.bn(b.node("Gemm", [a, b.init(b.weight([K, N])), bias]), N))
    assert_refused(b.build(), Reason.WEIGHT_NOT_CONSTANT)


def test_gemm_output_that_is_a_graph_output_is_refused():
    b = GraphBuilder()
    y = b.node("Gemm", [b.input("a", ["N", K]), b.init(b.weight([K, N]))])
    b.output(b.bn(y, N))
    b.output(y)
    assert_refused(b.build(), Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT)


def test_gemm_bias_that_would_overflow_fp16_is_refused():
    b = GraphBuilder(opset=15, dtype=np.float16)
    y = b.node("Gemm", [b.input("a", ["N", K]), b.init(b.weight([K, N])), b.init(np.full(N, 600, np.float16))])
    gamma, beta, mean, var = b.bn_params(N, np.float32)
    gamma[0], mean[0], var[0] = 1e3, 0.0, 1.0  # folded bias 6e5 > 65504
    b.output(b.bn(y, N, params=[gamma, beta, mean, var]))
    assert_refused(b.build(), Reason.FOLD_OVERFLOW, runnable=False)  # the fp16 BN output is inf anyway


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fp16_column_that_would_underflow_is_refused(trans_b):
    b = GraphBuilder(opset=15, dtype=np.float16)
    y = b.node("Gemm", [b.input("a", ["N", K]), b.init(b.weight([N, K] if trans_b else [K, N]))], transB=trans_b)
    gamma, beta, mean, var = b.bn_params(N, np.float32)
    gamma[1] = 1e-9
    b.output(b.bn(y, N, params=[gamma, beta, mean, var]))
    assert_refused(b.build(), Reason.FOLD_UNDERFLOW)


# ---- the cases the tier without verification folds (tests/fold/rules/test_safe_without_verification.py) -----

def _gemm_output_kept() -> onnx.ModelProto:
    b = GraphBuilder()
    y = b.node("Gemm", [b.input("a", ["N", K]), b.init(b.weight([K, N]))])
    b.output(b.bn(y, N))
    b.output(y)
    return b.build()


def _bias_computed() -> onnx.ModelProto:
    b = GraphBuilder()
    bias = b.node("Neg", [b.init(np.ones(N, np.float32))])
    b.output(b.bn(b.node("Gemm", [b.input("a", ["N", K]), b.init(b.weight([K, N])), bias]), N))
    return b.build()


SAFETY_CASES = {
    **{f"gemm_bn-t{ta}{tb}-{kind}": SafetyCase(functools.partial(gemm_bn_model, trans_a=ta, trans_b=tb, alpha=0.7,
                                                                 beta=-1.3, c_shape=C_SHAPES[kind]), "gemm_bn")
       for ta, tb, kind in itertools.product((0, 1), (0, 1), ("absent", "vector", "matrix", "column"))},
    "gemm_bn-fp16": SafetyCase(functools.partial(gemm_bn_model, trans_b=1, alpha=0.5, beta=2.0, dtype=np.float16),
                               "gemm_bn"),
    "gemm_bn-output-kept": SafetyCase(_gemm_output_kept, "gemm_bn", Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT),
    "gemm_bn-bias-computed": SafetyCase(_bias_computed, "gemm_bn", Reason.WEIGHT_NOT_CONSTANT),
}
