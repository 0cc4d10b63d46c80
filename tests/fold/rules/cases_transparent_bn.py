"""transparent_bn's cases for the tier that folds without verification (tests/fold/rules/safety.py), built with
tests/fold/rules/test_transparent_bn.py's graph builders: each producer and shape op, and one case per refusal."""

from __future__ import annotations

import functools

import numpy as np
import onnx

from bnfold.reasons import Reason
from tests.builders import GraphBuilder
from tests.fold.rules.safety import SafetyCase
from tests.fold.rules.test_transparent_bn import (
    C,
    K,
    _conv_1x1_map,
    _i64,
    conv_reshape_bn,
    matmul_reshape_transpose_bn,
    symbolic_reshape_bn,
    transpose_off_axis_bn,
)


def _convtranspose_identity() -> onnx.ModelProto:
    b = GraphBuilder(seed=6)
    b.output(b.bn(b.node("Identity", [b.conv_transpose(b.input("x", ["N", 3, 4, 4]), C, group=1)]), C, name="bn"))
    return b.build()


def _gemm_unsqueeze() -> onnx.ModelProto:
    b = GraphBuilder(seed=5)
    g = b.node("Gemm", [b.input("a", ["N", K]), b.init(b.weight([C, K])), b.init(b.weight([C]))], transB=1, beta=0.5)
    b.output(b.bn(b.node("Unsqueeze", [g, b.init(_i64([2]))]), C, name="bn"))
    return b.build()


def _link(extra: str = "", **bn_options) -> onnx.ModelProto:
    """Conv -> Identity -> BN; *extra*: "read" (the Identity output read again), "output" (also a graph output)."""
    b = GraphBuilder(seed=12)
    r = b.node("Identity", [_conv_1x1_map(b)])
    b.output(b.bn(r, C, name="bn", **bn_options))
    if extra == "read":
        b.output(b.node("Relu", [r]))
    if extra == "output":
        b.output(r)
    return b.build()


def _batched_matmul_weight() -> onnx.ModelProto:
    b = GraphBuilder(seed=14)
    mm = b.node("MatMul", [b.input("x", [2, 3, K]), b.init(b.weight([2, K, C]))])
    b.output(b.bn(b.node("Transpose", [mm], perm=[0, 2, 1]), C, name="bn"))
    return b.build()


def _mul_off_the_channel_axis() -> onnx.ModelProto:
    b = GraphBuilder(seed=18)
    t = b.node("Transpose", [b.conv(b.input("x", [2, 3, 6, 6]), C, k=3)], perm=[0, 2, 3, 1])  # channel on axis 3
    b.output(b.node("Mul", [t, b.init(np.full([1, C, 1, 1], 0.5, np.float32))], name="mul"))
    return b.build()


def _overridable_weight() -> onnx.ModelProto:
    b = GraphBuilder(seed=19)
    conv = b.node("Conv", [b.input("x", ["N", 3, 5, 5]), b.init(b.weight([C, 3, 5, 5]), overridable=True)])
    r = b.node("Reshape", [conv, b.init(_i64([-1, C, 1, 1]))])
    b.output(b.node("Mul", [r, b.init(np.full([1, C, 1, 1], 0.5, np.float32))], name="mul"))
    return b.build()


SAFETY_CASES = {
    **{f"transparent_bn-reshape-{name}": SafetyCase(functools.partial(conv_reshape_bn, target), "transparent_bn")
       for name, target in {"tf2onnx": (1, C, 1, 1), "minus-one": (-1, C, 1, 1), "drop-axis": (0, C, 1)}.items()},
    "transparent_bn-matmul-reshape-transpose": SafetyCase(matmul_reshape_transpose_bn, "transparent_bn"),
    "transparent_bn-gemm-unsqueeze": SafetyCase(_gemm_unsqueeze, "transparent_bn"),
    "transparent_bn-convtranspose-identity": SafetyCase(_convtranspose_identity, "transparent_bn"),
    "transparent_bn-fp16": SafetyCase(functools.partial(conv_reshape_bn, dtype=np.float16, seed=7), "transparent_bn"),
    "transparent_bn-symbolic": SafetyCase(symbolic_reshape_bn, "transparent_bn", Reason.AXIS_UNPROVEN),
    "transparent_bn-transpose-off-axis": SafetyCase(transpose_off_axis_bn, "transparent_bn", Reason.AXIS_UNPROVEN),
    "transparent_bn-link-read": SafetyCase(functools.partial(_link, "read"), "transparent_bn",
                                           Reason.PRODUCER_HAS_OTHER_CONSUMERS),
    "transparent_bn-link-output": SafetyCase(functools.partial(_link, "output"), "transparent_bn",
                                             Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT),
    "transparent_bn-training": SafetyCase(functools.partial(_link, training_mode=1), "transparent_bn",
                                          Reason.TRAINING_MODE, runnable=False),
    "transparent_bn-batched-weight": SafetyCase(_batched_matmul_weight, "transparent_bn", Reason.MATMUL_LAYOUT),
    "transparent_bn-mul-off-axis": SafetyCase(_mul_off_the_channel_axis, "transparent_bn", Reason.NOT_PER_CHANNEL),
    "transparent_bn-overridable": SafetyCase(_overridable_weight, "transparent_bn", Reason.OVERRIDABLE_INITIALIZER),
}
