"""matmul_bn: MatMul -> BatchNormalization folds into MatMul + Add only when the constant operand's free axis
is the normalized axis 1; any other layout, or an unprovable rank, is refused."""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import helper

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, assert_fp16_no_worse, assert_refused, op_count
from tests.fold.rules.safety import SafetyCase

K, C, L = 5, 4, 6


def fold(model: onnx.ModelProto, equivalent: bool = True) -> onnx.ModelProto:
    result = optimize(model, verify=False)
    assert op_count(result.model, "BatchNormalization") == 0
    assert [a.rule for a in result.report.applied] == ["matmul_bn"]
    assert result.report.refused == ()
    assert [n.op_type for n in result.model.graph.node if n.op_type in ("MatMul", "Add")] == ["MatMul", "Add"]
    add = next(n for n in result.model.graph.node if n.op_type == "Add")
    assert add.name == "bn" and add.output[0] == "bn_out"
    matmul = next(n for n in result.model.graph.node if n.op_type == "MatMul")
    assert matmul.name == "mm" and add.input[0] == matmul.output[0] == "mm_out"
    assert result.report.applied[0].output == "bn_out"
    if equivalent:
        assert_equivalent(model, result.model)
    return result.model


def rows_model(dtype=np.float32, through_relu: bool = False) -> onnx.ModelProto:
    """x[N, K] @ W[K, C] -> BN over C (a Linear layer exported as MatMul)."""
    b = GraphBuilder(dtype=dtype)
    x = b.input("x", ["N", K])
    if through_relu:  # x's rank then comes from shape inference, not a declaration
        x = b.node("Relu", [x])
    y = b.bn(b.node("MatMul", [x, b.init(b.weight([K, C]))], name="mm"), C, name="bn")
    b.output(b.node("Relu", [y], name="relu"))
    return b.build()


def test_rows_times_weight_folds():
    folded = fold(rows_model())
    bias = next(t for t in folded.graph.initializer if t.name == folded.graph.node[1].input[1])
    assert list(bias.dims) == [C]


def test_rank_from_shape_inference_is_enough():
    fold(rows_model(through_relu=True))


def test_weight_times_sequence_folds():
    """W[C, K] @ x[N, K, L] -> [N, C, L]: W's rows are the channel axis (a 1x1 Conv1d as MatMul)."""
    b = GraphBuilder()
    x = b.input("x", ["N", K, L])
    y = b.bn(b.node("MatMul", [b.init(b.weight([C, K])), x], name="mm"), C, name="bn")
    b.output(y)
    folded = fold(b.build())
    bias = next(t for t in folded.graph.initializer if t.name == folded.graph.node[1].input[1])
    assert list(bias.dims) == [C, 1]


def test_fp16_matmul_is_no_worse_than_unfolded():
    model = rows_model(dtype=np.float16)
    folded = fold(model, equivalent=False)
    assert {t.data_type for t in folded.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert_fp16_no_worse(model, folded)


# ---- refusals ---------------------------------------------------------------------------------------------

def test_sequence_times_weight_normalized_over_length_is_refused():
    """x[N, L, K] @ W[K, C] -> [N, L, C]; the BN normalizes axis 1 = L, which W does not carry."""
    b = GraphBuilder()
    y = b.node("MatMul", [b.input("x", ["N", L, K]), b.init(b.weight([K, C]))])
    b.output(b.bn(y, L))
    result = assert_refused(b.build(), Reason.MATMUL_LAYOUT)
    assert "rank 3" in result.report.refused[0].detail


def test_weight_times_matrix_normalized_over_columns_is_refused():
    """W[C, K] @ x[K, L] -> [C, L]; axis 1 is L, W's free axis landed on axis 0."""
    b = GraphBuilder()
    y = b.node("MatMul", [b.init(b.weight([C, K])), b.input("x", [K, L])])
    b.output(b.bn(y, L))
    assert_refused(b.build(), Reason.MATMUL_LAYOUT)


def test_rank3_weight_is_refused():
    b = GraphBuilder()
    y = b.node("MatMul", [b.input("x", [2, 3, K]), b.init(b.weight([2, K, C]))])  # -> [2, 3, C]
    b.output(b.bn(y, 3))
    result = assert_refused(b.build(), Reason.MATMUL_LAYOUT)
    assert "(2, 5, 4)" in result.report.refused[0].detail


def test_vector_times_weight_is_refused():
    """x[K] @ W[K, C] -> [C] (rank 1, not [1, C]): there is no axis 1 for W's columns to land on."""
    b = GraphBuilder()
    y = b.node("MatMul", [b.input("x", [K]), b.init(b.weight([K, C]))])
    b.output(b.bn(y, C))
    assert_refused(b.build(), Reason.MATMUL_LAYOUT, runnable=False)  # ORT rejects BN on a 1-D tensor


def test_no_constant_operand_is_refused():
    b = GraphBuilder()
    y = b.node("MatMul", [b.input("x", ["N", K]), b.input("w", [K, C])])
    b.output(b.bn(y, C))
    assert_refused(b.build(), Reason.MATMUL_LAYOUT)


def test_unknown_rank_is_refused():
    """x comes from a custom-domain op: no shape inference can say whether the output has rank 2 or 3."""
    b = GraphBuilder()
    b.nodes.append(helper.make_node("Mystery", [b.input("x", ["N", K])], ["z"], domain="example.custom"))
    b.output(b.bn(b.node("MatMul", ["z", b.init(b.weight([K, C]))]), C))
    model = b.build()
    model.opset_import.append(helper.make_opsetid("example.custom", 1))
    result = assert_refused(model, Reason.RANK_UNKNOWN, runnable=False)  # ORT has no Mystery kernel
    assert result.report.refused[0].detail == "z"


def test_matmul_output_read_twice_is_refused():
    b = GraphBuilder()
    y = b.node("MatMul", [b.input("x", ["N", K]), b.init(b.weight([K, C]))])
    b.output(b.node("Sub", [b.bn(y, C), y]))
    assert_refused(b.build(), Reason.PRODUCER_HAS_OTHER_CONSUMERS)


def test_matmul_with_bn_in_training_mode_is_refused():
    b = GraphBuilder(opset=15)
    y = b.node("MatMul", [b.input("x", [3, K]), b.init(b.weight([K, C]))])
    b.output(b.bn(y, C, training_mode=1, n_out=3))
    assert_refused(b.build(), Reason.TRAINING_MODE)


def test_fp16_channel_that_would_underflow_is_refused():
    b = GraphBuilder(opset=15, dtype=np.float16)
    y = b.node("MatMul", [b.init(b.weight([C, K])), b.input("x", ["N", K, L])])
    gamma, beta, mean, var = b.bn_params(C, np.float32)
    gamma[3] = 1e-9
    b.output(b.bn(y, C, params=[gamma, beta, mean, var]))
    assert_refused(b.build(), Reason.FOLD_UNDERFLOW)


# ---- the cases the tier without verification folds (tests/fold/rules/test_safe_without_verification.py) -----

def _matmul(x_shape, w_shape, channels: int, w_first: bool = False, custom: bool = False) -> onnx.ModelProto:
    """MatMul(x, W) (or W first) -> BN over *channels*; *custom*: x comes from a custom-domain op."""
    b = GraphBuilder()
    x = b.input("x", x_shape)
    if custom:
        b.nodes.append(helper.make_node("Mystery", [x], ["z"], domain="example.custom"))
        x = "z"
    w = b.init(b.weight(w_shape))
    b.output(b.bn(b.node("MatMul", [w, x] if w_first else [x, w], name="mm"), channels, name="bn"))
    model = b.build()
    if custom:
        model.opset_import.append(helper.make_opsetid("example.custom", 1))
    return model


SAFETY_CASES = {
    "matmul_bn-rows": SafetyCase(rows_model, "matmul_bn"),
    "matmul_bn-rows-inferred-rank": SafetyCase(functools.partial(rows_model, through_relu=True), "matmul_bn"),
    "matmul_bn-weight-first": SafetyCase(functools.partial(_matmul, ["N", K, L], [C, K], C, True), "matmul_bn"),
    "matmul_bn-fp16": SafetyCase(functools.partial(rows_model, dtype=np.float16), "matmul_bn"),
    "matmul_bn-over-length": SafetyCase(functools.partial(_matmul, ["N", L, K], [K, C], L), "matmul_bn",
                                        Reason.MATMUL_LAYOUT),
    "matmul_bn-over-columns": SafetyCase(functools.partial(_matmul, [K, L], [C, K], L, True), "matmul_bn",
                                         Reason.MATMUL_LAYOUT),
    "matmul_bn-rank-unknown": SafetyCase(functools.partial(_matmul, ["N", K], [K, C], C, custom=True), "matmul_bn",
                                         Reason.RANK_UNKNOWN, runnable=False),  # ORT has no Mystery kernel
}
