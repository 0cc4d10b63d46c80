"""matmul_affine: Dense -> BN written as MatMul -> Mul -> Add (tf2onnx from Keras), and affine chains after a
MatMul + bias Add, fold into the MatMul weight and one bias Add."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent
from tests.fold.rules._affine_helpers import assert_folds, assert_site_refused, signed
from tests.fold.rules.safety import SafetyCase

K, C, L = 5, 4, 3


def _dense(b: GraphBuilder, x_shape=("N", K)) -> str:
    x = b.input("x", list(x_shape))
    return b.node("MatMul", [x, b.init(b.weight([K, C]))], name="mm")


def keras_dense_bn_model(shape=(C,)) -> onnx.ModelProto:
    """MatMul -> Mul(*shape*) -> Add [C] -> Relu: a Keras Dense + BatchNormalization through tf2onnx."""
    b = GraphBuilder(seed=0)
    z = b.node("Mul", [_dense(b), b.init(signed(b.rng, list(shape)))], name="mul")
    y = b.node("Add", [z, b.init(signed(b.rng, [C]))], name="add")
    b.output(b.node("Relu", [y], name="relu"))
    return b.build()


def weight_first_model() -> onnx.ModelProto:
    """W[C, K] @ x[N, K, L] -> Mul [C, 1] -> Add [C, 1] -> BN: the channels on axis -2."""
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", K, L])
    mm = b.node("MatMul", [b.init(b.weight([C, K])), x], name="mm")
    z = b.node("Mul", [mm, b.init(signed(b.rng, [C, 1]))], name="mul")
    bias = b.node("Add", [z, b.init(signed(b.rng, [C, 1]))], name="bias")
    b.output(b.bn(bias, C, name="bn"))
    return b.build()


def rank3_fp16_model() -> onnx.ModelProto:
    b = GraphBuilder(seed=4, dtype=np.float16)
    z = b.node("Mul", [_dense(b, ("N", L, K)), b.init(signed(b.rng, [1, 1, C]).astype(np.float16))])
    b.output(b.node("Add", [z, b.init(signed(b.rng, [C]).astype(np.float16))]))
    return b.build()


@pytest.mark.parametrize("shape", [[C], [1, C], [], [1]], ids=["C", "1xC", "scalar", "one"])
def test_keras_dense_bn_mul_add_folds_into_matmul_and_bias(shape):
    result = assert_folds(keras_dense_bn_model(shape), ["matmul_affine"], ["MatMul", "Add", "Relu"])
    assert result.model.graph.node[0].output[0] == "mul_out"  # the MatMul took the Mul's output name


@pytest.mark.parametrize("second,const_first", [("Mul", False), ("Mul", True), ("Div", False), ("Sub", False),
                                                ("Sub", True), ("Add", False), ("Add", True)])
def test_chain_after_a_bias_add_folds_into_weight_and_bias(second, const_first):
    b = GraphBuilder(seed=1)
    bias = b.node("Add", [_dense(b), b.init(signed(b.rng, [1, C]))], name="bias")
    c = b.init(signed(b.rng, [C]))
    y = b.node(second, [c, bias] if const_first else [bias, c], name="op")
    b.output(y)
    result = assert_folds(b.build(), ["matmul_affine"], ["MatMul", "Add"])
    assert result.model.graph.node[1].output[0] == y


def test_bn_after_matmul_and_bias_add():
    b = GraphBuilder(seed=2)
    bias = b.node("Add", [_dense(b), b.init(signed(b.rng, [C]))], name="bias")
    b.output(b.bn(bias, C, name="bn"))
    assert_folds(b.build(), ["matmul_affine"], ["MatMul", "Add"])


def test_weight_first_layout_channel_on_axis_minus_two():
    """W[C, K] @ x[N, K, L]: channels on axis -2 (= 1), so a [C, 1] Mul and a BN both fold."""
    assert_folds(weight_first_model(), ["matmul_affine", "matmul_affine"], ["MatMul", "Add"])


def test_rank3_activations_and_fp16():
    assert_folds(rank3_fp16_model(), ["matmul_affine"], ["MatMul", "Add"])


def test_chain_keeps_float64_between_folds():
    """Mul -> Add -> Mul -> Add: three folds into one weight/bias, each rounded once from float64."""
    b = GraphBuilder(seed=5)
    t = _dense(b)
    for _ in range(2):
        t = b.node("Add", [b.node("Mul", [t, b.init(signed(b.rng, [C]))]), b.init(signed(b.rng, [C]))])
    b.output(t)
    model = b.build()
    result = assert_folds(model, ["matmul_affine"] * 3, ["MatMul", "Add"])
    assert_equivalent(model, result.model)


# ---- one negative per refusal -------------------------------------------------------------


def test_refuses_constant_not_per_channel():
    b = GraphBuilder(seed=6)
    b.output(b.node("Mul", [_dense(b, (2, K)), b.init(signed(b.rng, [2, 1]))], name="mul"))
    assert_site_refused(b.build(), "mul", Reason.NOT_PER_CHANNEL)


def test_refuses_constant_divided_by_tensor():
    b = GraphBuilder(seed=7)
    bias = b.node("Add", [_dense(b), b.init(signed(b.rng, [C]))], name="bias")
    b.output(b.node("Div", [b.init(signed(b.rng, [C])), bias], name="div"))
    assert_site_refused(b.build(), "div", Reason.NOT_PER_CHANNEL)


def test_refuses_constant_that_widens_the_rank():
    b = GraphBuilder(seed=8)
    b.output(b.node("Mul", [_dense(b), b.init(signed(b.rng, [1, 1, C]))], name="mul"))
    assert_site_refused(b.build(), "mul", Reason.NOT_PER_CHANNEL)


def test_refuses_weight_not_two_dimensional():
    b = GraphBuilder(seed=9)
    x = b.input("x", [2, 3, K])
    mm = b.node("MatMul", [x, b.init(b.weight([2, K, C]))], name="mm")
    b.output(b.node("Mul", [mm, b.init(signed(b.rng, [C]))], name="mul"))
    assert_site_refused(b.build(), "mul", Reason.MATMUL_LAYOUT)


def test_refuses_bn_whose_channel_is_not_the_weight_axis():
    """W[C, K] @ x[K, L] gives [C, L]: the weight's free axis is 0, BN normalizes axis 1."""
    b = GraphBuilder(seed=10)
    x = b.input("x", [K, C])
    mm = b.node("MatMul", [b.init(b.weight([C, K])), x], name="mm")
    bias = b.node("Add", [mm, b.init(signed(b.rng, [C, 1]))], name="bias")
    b.output(b.bn(bias, C, name="bn"))
    result = optimize(b.build(), verify=False)
    assert [(s.node, s.reason) for s in result.report.refused] == [("bn", Reason.MATMUL_LAYOUT)]


def test_refuses_unknown_rank():
    b = GraphBuilder(seed=11)
    b.inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
    mm = b.node("MatMul", ["x", b.init(b.weight([K, C]))], name="mm")
    b.output(b.node("Mul", [mm, b.init(signed(b.rng, [C]))], name="mul"))
    model = b.build()
    result = optimize(model, verify=False)
    assert [(s.node, s.reason) for s in result.report.refused] == [("mul", Reason.RANK_UNKNOWN)]
    assert result.model.graph == model.graph


def test_refuses_matmul_output_read_elsewhere():
    b = GraphBuilder(seed=12)
    mm = _dense(b)
    b.output(b.node("Mul", [mm, b.init(signed(b.rng, [C]))], name="mul"))
    b.output(b.node("Relu", [mm]))
    assert_site_refused(b.build(), "mul", Reason.PRODUCER_HAS_OTHER_CONSUMERS)


def test_refuses_bias_add_that_is_a_graph_output():
    b = GraphBuilder(seed=13)
    bias = b.output(b.node("Add", [_dense(b), b.init(signed(b.rng, [C]))], name="bias"))
    b.output(b.node("Mul", [bias, b.init(signed(b.rng, [C]))], name="mul"))
    assert_site_refused(b.build(), "mul", Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT)


def test_refuses_overridable_weight():
    b = GraphBuilder(seed=14)
    x = b.input("x", ["N", K])
    mm = b.node("MatMul", [x, b.init(b.weight([K, C]), overridable=True)], name="mm")
    b.output(b.node("Mul", [mm, b.init(signed(b.rng, [C]))], name="mul"))
    assert_site_refused(b.build(), "mul", Reason.OVERRIDABLE_INITIALIZER, runnable=False)


def test_refuses_overflow():
    b = GraphBuilder(seed=15)
    b.output(b.node("Mul", [_dense(b), b.init(np.full(C, 3e38, np.float32))], name="mul"))
    assert_site_refused(b.build(), "mul", Reason.FOLD_OVERFLOW, runnable=False)  # the original overflows too


def test_refuses_shape_mismatch():
    b = GraphBuilder(seed=16)
    b.output(b.node("Mul", [_dense(b), b.init(signed(b.rng, [C + 1]))], name="mul"))
    assert_site_refused(b.build(), "mul", Reason.SHAPE_MISMATCH, runnable=False)


def test_plain_matmul_add_is_not_a_site():
    """MatMul -> Add(bias) is already the folded form: neither folded nor reported."""
    b = GraphBuilder(seed=17)
    b.output(b.node("Add", [_dense(b), b.init(signed(b.rng, [C]))], name="bias"))
    model = b.build()
    result = optimize(model, verify=False)
    assert not result.report.applied and result.report.refused == ()
    assert isinstance(result.model, onnx.ModelProto)


# ---- the cases the tier without verification folds (tests/fold/rules/test_safe_without_verification.py) -----

def _bias_then_bn() -> onnx.ModelProto:
    b = GraphBuilder(seed=2)
    b.output(b.bn(b.node("Add", [_dense(b), b.init(signed(b.rng, [C]))], name="bias"), C, name="bn"))
    return b.build()


def _refused_mul(kind: str) -> onnx.ModelProto:
    """MatMul -> Mul "mul", spoilt by *kind*: "rows" (a [2, 1] constant), "batched" (a [2, K, C] weight),
    "read" (the MatMul output read again), "output" (a bias Add that is a graph output), "overridable"
    (the weight also a graph input), "overflow" (3e38), "wide" (a [C + 1] constant), "rank" (no input shape)."""
    b = GraphBuilder(seed=9)
    if kind == "rank":
        b.inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
    x = "x" if kind == "rank" else b.input("x", {"rows": [2, K], "batched": [2, 3, K]}.get(kind, ["N", K]))
    weight = b.init(b.weight([2, K, C] if kind == "batched" else [K, C]), overridable=kind == "overridable")
    t = mm = b.node("MatMul", [x, weight], name="mm")
    if kind == "output":
        t = b.output(b.node("Add", [mm, b.init(signed(b.rng, [C]))], name="bias"))
    const = {"rows": signed(b.rng, [2, 1]), "overflow": np.full(C, 3e38, np.float32),
             "wide": signed(b.rng, [C + 1])}.get(kind)
    b.output(b.node("Mul", [t, b.init(signed(b.rng, [C]) if const is None else const)], name="mul"))
    if kind == "read":
        b.output(b.node("Relu", [mm]))
    return b.build()


def _mul_case(kind: str, reason: Reason, runnable: bool = True) -> SafetyCase:
    return SafetyCase(functools.partial(_refused_mul, kind), "matmul_affine", reason, runnable)


SAFETY_CASES = {
    **{f"matmul_affine-keras-{name}": SafetyCase(functools.partial(keras_dense_bn_model, shape), "matmul_affine")
       for name, shape in {"C": (C,), "scalar": ()}.items()},
    "matmul_affine-bias-bn": SafetyCase(_bias_then_bn, "matmul_affine"),
    "matmul_affine-weight-first": SafetyCase(weight_first_model, "matmul_affine"),
    "matmul_affine-rank3-fp16": SafetyCase(rank3_fp16_model, "matmul_affine"),
    "matmul_affine-rows": _mul_case("rows", Reason.NOT_PER_CHANNEL),
    "matmul_affine-batched-weight": _mul_case("batched", Reason.MATMUL_LAYOUT),
    "matmul_affine-read": _mul_case("read", Reason.PRODUCER_HAS_OTHER_CONSUMERS),
    "matmul_affine-bias-output": _mul_case("output", Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT),
    "matmul_affine-overridable": _mul_case("overridable", Reason.OVERRIDABLE_INITIALIZER),
    "matmul_affine-overflow": _mul_case("overflow", Reason.FOLD_OVERFLOW, runnable=False),  # inf in the original
    "matmul_affine-wide": _mul_case("wide", Reason.SHAPE_MISMATCH, runnable=False),  # ORT rejects the Mul
    "matmul_affine-rank": _mul_case("rank", Reason.RANK_UNKNOWN, runnable=False),  # no shape to feed
}
