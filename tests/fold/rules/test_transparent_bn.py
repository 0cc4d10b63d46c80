"""transparent_bn: a BatchNormalization behind Identity / Reshape / Transpose / Flatten / Squeeze / Unsqueeze
folds into the Conv, ConvTranspose, Gemm or MatMul before them, only where the channel mapping is proven."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, assert_fp16_no_worse, assert_refused, op_count

C, K = 4, 5


def _i64(values) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _fold(model, ops: list[str]):
    result = optimize(model, verify=False)
    assert [a.rule for a in result.report.applied] == ["transparent_bn"], result.report.refused
    assert result.report.refused == ()
    assert op_count(result.model, "BatchNormalization") == 0
    assert [n.op_type for n in result.model.graph.node] == ops
    assert result.model.graph.node[-1].output[0] == model.graph.output[0].name
    return result


def _conv_1x1_map(b: GraphBuilder) -> str:
    """A Conv whose output map is 1x1 (a 5x5 kernel over a 5x5 input), as before a tf2onnx Reshape."""
    return b.conv(b.input("x", ["N", 3, 5, 5]), C, k=5)


def conv_reshape_bn(target=(-1, C, 1, 1), dtype=np.float32, seed: int = 0) -> onnx.ModelProto:
    """Conv [N, C, 1, 1] -> Reshape(*target*) -> BN "bn" as the graph output (batch one where target starts 1)."""
    b = GraphBuilder(seed=seed, dtype=dtype)
    r = b.node("Reshape", [_conv_1x1_map(b), b.init(_i64(list(target)))])
    b.output(b.bn(r, C, name="bn"))
    model = b.build()
    if target[0] == 1:  # a batch of one, as the tf2onnx export it imitates
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    return model


def matmul_reshape_transpose_bn() -> onnx.ModelProto:
    """[2, 6, K] @ W -> [2, 6, C] -> Reshape [2, 2, 3, C] -> Transpose [0, 3, 1, 2] -> [2, C, 2, 3] -> BN."""
    b = GraphBuilder(seed=4)
    mm = b.node("MatMul", [b.input("x", [2, 6, K]), b.init(b.weight([K, C]))])
    r = b.node("Reshape", [mm, b.init(_i64([2, 2, 3, C]))])
    b.output(b.bn(b.node("Transpose", [r], perm=[0, 3, 1, 2]), C, name="bn"))
    return b.build()


def symbolic_reshape_bn() -> onnx.ModelProto:
    """Conv [N, C, H, W] -> Reshape [0, C, -1] -> BN: the size behind the channel is symbolic."""
    b = GraphBuilder(seed=9)
    conv = b.conv(b.input("x", ["N", 3, "H", "W"]), C, k=1)
    b.output(b.bn(b.node("Reshape", [conv, b.init(_i64([0, C, -1]))]), C, name="bn"))
    return b.build()


def transpose_off_axis_bn() -> onnx.ModelProto:
    """Conv [2, 4, 4, 4] -> Transpose [0, 2, 1, 3] -> BN over C: the channel moved off axis 1."""
    b = GraphBuilder(seed=11)
    conv = b.conv(b.input("x", [2, 3, 6, 6]), C, k=3)
    b.output(b.bn(b.node("Transpose", [conv], perm=[0, 2, 1, 3]), C, name="bn"))
    return b.build()


@pytest.mark.parametrize("target", [[1, C, 1, 1], [-1, C, 1, 1], [0, 0, 0, 0], [0, C, 1]],
                         ids=["tf2onnx", "minus-one", "zeros", "drop-axis"])
def test_conv_reshape_that_keeps_the_channel_axis(target):
    model = conv_reshape_bn(target)
    _fold(model, ["Conv", "Reshape"])
    assert model.graph.output[0].name == "bn_out"
    assert_equivalent(model, optimize(model, verify=False).model)


@pytest.mark.parametrize("op", ["Identity", "Flatten", "Squeeze", "Unsqueeze"])
def test_conv_then_shape_ops(op):
    b = GraphBuilder(seed=1)
    t = _conv_1x1_map(b)
    if op == "Squeeze":  # [N, C, 1, 1] -> [N, C]
        t = b.node(op, [t, b.init(_i64([2, 3]))])
    elif op == "Unsqueeze":  # [N, C, 1, 1] -> [N, C, 1, 1, 1]
        t = b.node(op, [t, b.init(_i64([4]))])
    else:
        t = b.node(op, [t])
    b.output(b.bn(t, C, name="bn"))
    model = b.build()
    _fold(model, ["Conv", op])
    assert_equivalent(model, optimize(model, verify=False).model)


def test_matmul_identity_bn():
    b = GraphBuilder(seed=2)
    mm = b.node("MatMul", [b.input("x", ["N", K]), b.init(b.weight([K, C]))])
    b.output(b.bn(b.node("Identity", [mm]), C, name="bn"))
    model = b.build()
    _fold(model, ["MatMul", "Identity", "Add"])
    assert_equivalent(model, optimize(model, verify=False).model)


def test_matmul_reshape_to_nchw_bn():
    """MatMul [N, C] -> Reshape [-1, C, 1, 1] -> BN: the shift becomes a [C, 1, 1] Add after the Reshape."""
    b = GraphBuilder(seed=3)
    mm = b.node("MatMul", [b.input("x", ["N", K]), b.init(b.weight([K, C]))])
    b.output(b.bn(b.node("Reshape", [mm, b.init(_i64([-1, C, 1, 1]))]), C, name="bn"))
    model = b.build()
    result = _fold(model, ["MatMul", "Reshape", "Add"])
    bias = next(t for t in result.model.graph.initializer if t.name.startswith("bn_bias"))
    assert list(bias.dims) == [C, 1, 1]
    assert_equivalent(model, result.model)


def test_matmul_reshape_transpose_bn():
    model = matmul_reshape_transpose_bn()
    _fold(model, ["MatMul", "Reshape", "Transpose", "Add"])
    assert_equivalent(model, optimize(model, verify=False).model)


def test_gemm_and_convtranspose_producers():
    b = GraphBuilder(seed=5)
    g = b.node("Gemm", [b.input("a", ["N", K]), b.init(b.weight([C, K])), b.init(b.weight([C]))], transB=1, beta=0.5)
    b.output(b.bn(b.node("Unsqueeze", [g, b.init(_i64([2]))]), C, name="bn"))
    model = b.build()
    _fold(model, ["Gemm", "Unsqueeze"])
    assert_equivalent(model, optimize(model, verify=False).model)
    b = GraphBuilder(seed=6)
    ct = b.conv_transpose(b.input("x", ["N", 3, 4, 4]), C, group=1)
    b.output(b.bn(b.node("Identity", [ct]), C, name="bn"))
    model = b.build()
    _fold(model, ["ConvTranspose", "Identity"])
    assert_equivalent(model, optimize(model, verify=False).model)


def test_fp16_conv_reshape_bn():
    model = conv_reshape_bn(dtype=np.float16, seed=7)
    result = _fold(model, ["Conv", "Reshape"])
    assert_fp16_no_worse(model, result.model)


def test_intermediate_tensors_are_renamed():
    """The Conv and Reshape outputs change value, so they must not keep names verification would compare."""
    b = GraphBuilder(seed=8)
    conv = _conv_1x1_map(b)
    r = b.node("Reshape", [conv, b.init(_i64([-1, C, 1, 1]))])
    b.output(b.bn(r, C, name="bn"))
    result = _fold(b.build(), ["Conv", "Reshape"])
    names = {o for n in result.model.graph.node for o in n.output}
    assert conv not in names and r not in names
    assert result.report.tensor_map[conv] is None and result.report.tensor_map[r] is None


# ---- one negative per refusal -------------------------------------------------------------


def test_refuses_symbolic_size_behind_the_channel():
    result = assert_refused(symbolic_reshape_bn(), Reason.AXIS_UNPROVEN)
    assert "Reshape" in result.report.refused[0].detail


def test_refuses_reshape_that_splits_the_channels():
    b = GraphBuilder(seed=10)
    conv = b.conv(b.input("x", [2, 3, 4, 4]), C, k=3)  # [2, 4, 2, 2]
    b.output(b.bn(b.node("Reshape", [conv, b.init(_i64([2, 2, 8]))]), 2, name="bn"))
    assert_refused(b.build(), Reason.AXIS_UNPROVEN)


def test_refuses_transpose_that_moves_the_channel_off_axis_one():
    result = assert_refused(transpose_off_axis_bn(), Reason.AXIS_UNPROVEN)
    assert "Transpose" in result.report.refused[0].detail


def test_refuses_link_read_elsewhere():
    b = GraphBuilder(seed=12)
    r = b.node("Reshape", [_conv_1x1_map(b), b.init(_i64([-1, C, 1, 1]))])
    b.output(b.bn(r, C, name="bn"))
    b.output(b.node("Relu", [r]))
    assert_refused(b.build(), Reason.PRODUCER_HAS_OTHER_CONSUMERS)


def test_refuses_link_that_is_a_graph_output():
    b = GraphBuilder(seed=13)
    r = b.node("Identity", [_conv_1x1_map(b)])
    b.output(b.bn(r, C, name="bn"))
    b.output(r)
    assert_refused(b.build(), Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT)


def test_refuses_matmul_with_batched_weight():
    b = GraphBuilder(seed=14)
    mm = b.node("MatMul", [b.input("x", [2, 3, K]), b.init(b.weight([2, K, C]))])
    t = b.node("Transpose", [mm], perm=[0, 2, 1])
    b.output(b.bn(t, C, name="bn"))
    assert_refused(b.build(), Reason.MATMUL_LAYOUT)


def test_refuses_training_mode_bn():
    b = GraphBuilder(seed=15)
    r = b.node("Identity", [_conv_1x1_map(b)])
    b.output(b.bn(r, C, name="bn", training_mode=1))
    assert_refused(b.build(), Reason.TRAINING_MODE, runnable=False)


def test_keras_style_mul_add_behind_a_reshape():
    b = GraphBuilder(seed=16)
    r = b.node("Reshape", [_conv_1x1_map(b), b.init(_i64([-1, C, 1, 1]))])
    z = b.node("Mul", [r, b.init(b.rng.uniform(0.5, 2.0, [1, C, 1, 1]).astype(np.float32))])
    b.output(b.node("Add", [z, b.init(b.rng.standard_normal([C, 1, 1]).astype(np.float32))]))
    model = b.build()
    result = optimize(model, verify=False)
    assert [a.rule for a in result.report.applied] == ["transparent_bn"] * 2 and result.report.refused == ()
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Reshape"]
    assert_equivalent(model, result.model)


def test_matmul_unsqueeze_mul_add_on_the_moved_axis():
    """[N, C] -> Unsqueeze(1) -> [N, 1, C]: the channel is now axis 2; a [C] Mul folds into W, the Add stays."""
    b = GraphBuilder(seed=17)
    mm = b.node("MatMul", [b.input("x", ["N", K]), b.init(b.weight([K, C]))])
    u = b.node("Unsqueeze", [mm, b.init(_i64([1]))])
    z = b.node("Mul", [u, b.init(b.rng.uniform(0.5, 2.0, [C]).astype(np.float32))])
    b.output(b.node("Add", [z, b.init(b.rng.standard_normal([1, 1, C]).astype(np.float32))]))
    model = b.build()
    result = optimize(model, verify=False)
    assert [a.rule for a in result.report.applied] == ["transparent_bn"] and result.report.refused == ()
    assert [n.op_type for n in result.model.graph.node] == ["MatMul", "Unsqueeze", "Add"]
    assert_equivalent(model, result.model)


def test_refuses_affine_constant_off_the_channel_axis():
    b = GraphBuilder(seed=18)
    conv = b.conv(b.input("x", [2, 3, 6, 6]), C, k=3)  # [2, 4, 4, 4]
    t = b.node("Transpose", [conv], perm=[0, 2, 3, 1])  # channel on axis 3
    b.output(b.node("Mul", [t, b.init(np.full([1, C, 1, 1], 0.5, np.float32))], name="mul"))
    result = optimize(b.build(), verify=False)
    assert [(s.node, s.reason) for s in result.report.refused] == [("mul", Reason.NOT_PER_CHANNEL)]
    assert not result.report.applied


def test_refuses_overridable_producer_weight_behind_a_chain():
    """Regression (fuzz): an overridable Conv weight behind a Reshape crashed the channel count lookup."""
    b = GraphBuilder(seed=19)
    x = b.input("x", ["N", 3, 5, 5])
    conv = b.node("Conv", [x, b.init(b.weight([C, 3, 5, 5]), overridable=True)])
    r = b.node("Reshape", [conv, b.init(_i64([-1, C, 1, 1]))])
    b.output(b.node("Mul", [r, b.init(np.full([1, C, 1, 1], 0.5, np.float32))], name="mul"))
    result = optimize(b.build(), verify=False)
    assert [(s.node, s.reason) for s in result.report.refused] == [("mul", Reason.OVERRIDABLE_INITIALIZER)]
