"""affine_chain: Mul / Add / Sub / Div by a per-channel constant folded into Conv, ConvTranspose or Gemm."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, op_count
from tests.fold.rules.safety import SafetyCase

C = 4


def _conv(b: GraphBuilder, spatial: int = 8) -> str:
    x = b.input("x", ["N", 3, spatial, spatial])
    return b.conv(x, C, name="conv")


def _positive(b: GraphBuilder, shape) -> np.ndarray:
    return b.rng.uniform(0.5, 2.0, shape).astype(np.float32) * b.rng.choice([-1.0, 1.0], shape).astype(np.float32)


def _assert_all_folded(model: onnx.ModelProto, y: str, n_folds: int, target_op: str = "Conv") -> None:
    result = optimize(model, verify=False)
    out = result.model
    assert [n.op_type for n in out.graph.node] == [target_op]
    assert out.graph.node[0].output[0] == y
    assert [a.rule for a in result.report.applied] == ["affine_chain"] * n_folds
    assert {a.target_op for a in result.report.applied} == {target_op}
    assert result.report.refused == ()
    assert_equivalent(model, out)


def test_conv_mul_add_chain_folds_completely():
    b = GraphBuilder(seed=0)
    z = b.node("Mul", [_conv(b), b.init(_positive(b, [C, 1, 1]))], name="mul")
    y = b.node("Add", [z, b.init(_positive(b, [1, C, 1, 1]))], name="add")
    b.output(y, shape=None)
    model = b.build()
    _assert_all_folded(model, y, 2)
    result = optimize(model, verify=False)
    assert [a.node for a in result.report.applied] == ["mul", "add"]
    assert result.report.tensor_map[z] == y  # the Mul output is gone; its value now lives nowhere but y


@pytest.mark.parametrize("op,const_first", [("Sub", False), ("Sub", True), ("Div", False), ("Mul", True),
                                            ("Add", True)], ids=["x-c", "c-x", "x/c", "c*x", "c+x"])
def test_each_affine_op_and_operand_order(op, const_first):
    b = GraphBuilder(seed=1)
    x, c = _conv(b), b.init(_positive(b, [C, 1, 1]))
    y = b.node(op, [c, x] if const_first else [x, c])
    b.output(y, shape=None)
    _assert_all_folded(b.build(), y, 1)


@pytest.mark.parametrize("shape", [[], [1], [1, 1, 1], [1, 1, 1, 1]], ids=["rank0", "rank1", "rank3", "rank4"])
@pytest.mark.parametrize("op", ["Mul", "Sub", "Div"])
def test_scalar_constants(op, shape):
    b = GraphBuilder(seed=2)
    y = b.node(op, [_conv(b), b.init(np.full(shape, -1.75, dtype=np.float32))])
    b.output(y, shape=None)
    _assert_all_folded(b.build(), y, 1)


def test_constant_node_operand_folds_and_disappears():
    b = GraphBuilder(seed=3)
    y = b.node("Mul", [_conv(b), b.constant(_positive(b, [C, 1, 1]))])
    b.output(y, shape=None)
    _assert_all_folded(b.build(), y, 1)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_then_per_channel_vector(trans_b):
    """On a 2-D [N, C] output a [C] constant IS per channel."""
    b = GraphBuilder(seed=4)
    a = b.input("a", ["N", 5])
    w = b.rng.standard_normal((C, 5) if trans_b else (5, C)).astype(np.float32)
    g = b.node("Gemm", [a, b.init(w), b.init(b.rng.standard_normal(C).astype(np.float32))], name="gemm",
               transB=trans_b, beta=0.5)
    z = b.node("Mul", [g, b.init(_positive(b, [C]))])
    y = b.node("Sub", [z, b.init(_positive(b, [1, C]))])
    b.output(y, shape=None)
    _assert_all_folded(b.build(), y, 2, "Gemm")


def test_gemm_without_bias_gets_one():
    b = GraphBuilder(seed=4)
    a = b.input("a", ["N", 5])
    g = b.node("Gemm", [a, b.init(b.rng.standard_normal((5, C)).astype(np.float32))], name="gemm", beta=3.0)
    y = b.node("Add", [g, b.init(_positive(b, [C]))])
    b.output(y, shape=None)
    model = b.build()
    _assert_all_folded(model, y, 1, "Gemm")
    gemm = optimize(model, verify=False).model.graph.node[0]
    assert gemm.input[2] == "gemm_bias"
    assert [a.f for a in gemm.attribute if a.name == "beta"] == [1.0]


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_then_add(group):
    b = GraphBuilder(seed=5)
    x = b.input("x", ["N", 4, 5, 5])
    w = b.init(b.weight([4, 6 // group, 3, 3]))
    t = b.node("ConvTranspose", [x, w], name="deconv", group=group, strides=[2, 2])
    z = b.node("Add", [t, b.init(_positive(b, [6, 1, 1]))])
    y = b.node("Mul", [z, b.init(_positive(b, [1, 6, 1, 1]))])
    b.output(y, shape=None)
    _assert_all_folded(b.build(), y, 2, "ConvTranspose")


def _assert_refused(model: onnx.ModelProto, reason: Reason, anchor_op: str) -> None:
    result = optimize(model, verify=False)
    assert result.report.applied == ()
    assert [(s.reason, s.rule, s.op_type) for s in result.report.refused] == [(reason, "affine_chain", anchor_op)]
    assert result.model.SerializeToString() == model.SerializeToString()
    assert_equivalent(model, result.model)


def test_vector_on_4d_output_broadcasts_over_width_not_channels():
    """[C] on [N, C, H, W] runs along W; with W == C the model is valid, yet the fold would be wrong."""
    b = GraphBuilder(seed=6)
    conv = _conv(b, spatial=C + 2)  # 3x3 kernel, no pads: output width C
    b.output(b.node("Mul", [conv, b.init(_positive(b, [C]))]), shape=None)
    _assert_refused(b.build(), Reason.NOT_PER_CHANNEL, "Mul")


@pytest.mark.parametrize("shape", [[1, C, 2, 1], [2, C, 1, 1], [1, 1, 1, 1, 1]], ids=["spatial", "batch", "rank5"])
def test_constants_not_per_channel(shape):
    b = GraphBuilder(seed=7)
    b.output(b.node("Add", [_conv(b, spatial=4), b.init(_positive(b, shape))]), shape=None)
    _assert_refused(b.build(), Reason.NOT_PER_CHANNEL, "Add")


def test_constant_with_wrong_channel_count():
    """Axis-1 size neither 1 nor C: such a model can't run, but the rule must refuse rather than guess."""
    b = GraphBuilder(seed=7)
    b.output(b.node("Add", [_conv(b), b.init(_positive(b, [C - 1, 1, 1]))]), shape=None)
    model = b.build()
    result = optimize(model, verify=False)
    assert result.report.applied == ()
    assert [s.reason for s in result.report.refused] == [Reason.SHAPE_MISMATCH]
    assert result.model.SerializeToString() == model.SerializeToString()


def test_constant_divided_by_tensor_is_not_affine():
    b = GraphBuilder(seed=8)
    b.output(b.node("Div", [b.init(_positive(b, [C, 1, 1])), _conv(b)]), shape=None)
    _assert_refused(b.build(), Reason.NOT_PER_CHANNEL, "Div")


def test_conv_output_with_another_reader():
    b = GraphBuilder(seed=9)
    conv = _conv(b)
    y = b.node("Mul", [conv, b.init(_positive(b, [C, 1, 1]))])
    b.output(b.node("Add", [y, b.node("Relu", [conv])]), shape=None)
    _assert_refused(b.build(), Reason.PRODUCER_HAS_OTHER_CONSUMERS, "Mul")


def test_conv_output_that_is_graph_output():
    b = GraphBuilder(seed=9)
    conv = _conv(b)
    b.output(b.node("Mul", [conv, b.init(_positive(b, [C, 1, 1]))]), shape=None)
    b.output(conv, shape=None)
    _assert_refused(b.build(), Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT, "Mul")


def test_division_by_zero_is_refused_without_writing_inf():
    b = GraphBuilder(seed=10)
    divisor = _positive(b, [C, 1, 1])
    divisor[2] = 0.0
    b.output(b.node("Div", [_conv(b), b.init(divisor)]), shape=None)
    model = b.build()
    result = optimize(model, verify=False)
    assert result.report.applied == ()
    assert [s.reason for s in result.report.refused] == [Reason.FOLD_OVERFLOW]
    assert result.model.SerializeToString() == model.SerializeToString()
    for tensor in result.model.graph.initializer:
        assert np.isfinite(numpy_helper.to_array(tensor)).all(), tensor.name


def test_ordinary_add_of_two_tensors_is_no_site():
    b = GraphBuilder(seed=11)
    conv = _conv(b)
    b.output(b.node("Add", [conv, conv]), shape=None)
    model = b.build()
    result = optimize(model, verify=False)
    assert result.report.applied == () and result.report.refused == ()
    assert op_count(result.model, "Add") == 1


# ---- the cases the tier without verification folds (tests/fold/rules/test_safe_without_verification.py) -----

def _conv_op(op: str, shape, const_first: bool = False, spatial: int = 8, zero_at: int | None = None,
             seed: int = 12) -> onnx.ModelProto:
    """Conv -> *op* by a constant of *shape* (*zero_at*: that channel's constant is 0)."""
    b = GraphBuilder(seed=seed)
    x = _conv(b, spatial)
    value = _positive(b, shape)
    if zero_at is not None:
        value[zero_at] = 0.0
    c = b.init(value)
    b.output(b.node(op, [c, x] if const_first else [x, c]), shape=None)
    return b.build()


def _chain(producer: str) -> onnx.ModelProto:
    """Conv / Gemm / ConvTranspose -> Mul -> Add (a two-fold chain)."""
    b = GraphBuilder(seed=13)
    if producer == "Gemm":
        y, shape = b.node("Gemm", [b.input("a", ["N", 5]), b.init(b.rng.standard_normal((C, 5)).astype(np.float32))],
                          transB=1, beta=0.5), [C]
    elif producer == "ConvTranspose":
        w = b.init(b.weight([4, 3, 3, 3]))
        y, shape = b.node("ConvTranspose", [b.input("x", ["N", 4, 5, 5]), w], group=2, strides=[2, 2]), [6, 1, 1]
    else:
        y, shape = _conv(b), [1, C, 1, 1]
    z = b.node("Mul", [y, b.init(_positive(b, shape))])
    b.output(b.node("Add", [z, b.init(_positive(b, shape))]), shape=None)
    return b.build()


def _conv_read_twice() -> onnx.ModelProto:
    b = GraphBuilder(seed=9)
    conv = _conv(b)
    y = b.node("Mul", [conv, b.init(_positive(b, [C, 1, 1]))])
    b.output(b.node("Add", [y, b.node("Relu", [conv])]), shape=None)
    return b.build()


SAFETY_CASES = {
    **{f"affine_chain-{producer}": SafetyCase(functools.partial(_chain, producer), "affine_chain")
       for producer in ("Conv", "Gemm", "ConvTranspose")},
    **{f"affine_chain-{op}-{first}": SafetyCase(functools.partial(_conv_op, op, [C, 1, 1], first), "affine_chain")
       for op, first in (("Sub", False), ("Sub", True), ("Div", False), ("Mul", True), ("Add", True))},
    "affine_chain-scalar": SafetyCase(functools.partial(_conv_op, "Mul", []), "affine_chain"),
    "affine_chain-over-width": SafetyCase(functools.partial(_conv_op, "Mul", [C], spatial=C + 2), "affine_chain",
                                          Reason.NOT_PER_CHANNEL),
    "affine_chain-spatial": SafetyCase(functools.partial(_conv_op, "Add", [1, C, 2, 1], spatial=4), "affine_chain",
                                       Reason.NOT_PER_CHANNEL),
    "affine_chain-c-over-x": SafetyCase(functools.partial(_conv_op, "Div", [C, 1, 1], True), "affine_chain",
                                        Reason.NOT_PER_CHANNEL),
    "affine_chain-divide-by-zero": SafetyCase(functools.partial(_conv_op, "Div", [C, 1, 1], zero_at=2),
                                              "affine_chain", Reason.FOLD_OVERFLOW, runnable=False),  # inf output
    "affine_chain-read-twice": SafetyCase(_conv_read_twice, "affine_chain", Reason.PRODUCER_HAS_OTHER_CONSUMERS),
}
