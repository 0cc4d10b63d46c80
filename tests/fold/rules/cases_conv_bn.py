"""conv_bn's cases for the tier that folds without verification (tests/fold/rules/safety.py), built with
tests/fold/rules/test_conv_bn.py's own graph builders: every layout it folds and one case per refusal."""

from __future__ import annotations

import functools

import numpy as np
import onnx

from bnfold.reasons import Reason
from tests.builders import GraphBuilder
from tests.fold.rules.safety import SafetyCase
from tests.fold.rules.test_conv_bn import LAYOUTS, conv_bn_model, conv_then_bn


def _conv_then_bn_out(extra: str = "", **bn_options) -> onnx.ModelProto:
    """conv_then_bn with its BN output as the graph output; *extra*: "read" (the conv output read again),
    "output" (the conv output also a graph output), "mean" (running mean read)."""
    b, c, y = conv_then_bn(**bn_options)
    b.output(b.node("Add", [y, c]) if extra == "read" else y)
    if extra == "output":
        b.output(c)
    if extra == "mean":
        b.output(f"{y}1", shape=[4])
    return b.build()


def _weight_fed() -> onnx.ModelProto:
    b = GraphBuilder()
    x, w = b.input("x", ["N", 3, 6, 6]), b.input("w", [4, 3, 3, 3])
    b.output(b.bn(b.node("Conv", [x, w]), 4))
    return b.build()


def _mean_computed() -> onnx.ModelProto:
    b = GraphBuilder()
    c = b.conv(b.input("x", ["N", 3, 6, 6]), 4)
    gamma, beta, mean, var = b.bn_params(4)
    b.output(b.node("BatchNormalization", [c, b.init(gamma), b.init(beta), b.node("Abs", [b.init(mean)]),
                                           b.init(var)], name="bn"))
    return b.build()


def _with_params(dtype=np.float16, change=None, opset: int = 15, **bn_options) -> onnx.ModelProto:
    """Conv -> BN with fp32 parameters that *change* edits (a channel that overflows or underflows)."""
    b = GraphBuilder(opset=opset, dtype=dtype)
    x = b.input("x", ["N", 3, 6, 6])
    params = b.bn_params(4, np.float32)
    if change is not None:
        change(params)
    b.output(b.bn(b.conv(x, 4), params=params, **bn_options))
    return b.build()


def _spatial_zero() -> onnx.ModelProto:
    b = GraphBuilder(opset=8)
    per_activation = [np.abs(p)[:, None, None] * np.ones((4, 4, 4), np.float32) for p in b.bn_params(4)]
    b.output(b.bn(b.conv(b.input("x", [2, 3, 6, 6]), 4), 4, params=per_activation, spatial=0))
    return b.build(ir_version=3)


def _after_add() -> onnx.ModelProto:
    b = GraphBuilder()
    x, z = b.input("x", ["N", 3, 6, 6]), b.input("z", ["N", 3, 6, 6])
    b.output(b.bn(b.node("Add", [x, z]), 3, name="bn"))
    return b.build()


def _integer_mean(params) -> None:
    params[2] = params[2].astype(np.int64)


def _overflow(params) -> None:
    params[0][1], params[2][1], params[3][1] = 1e6, 0.0, 1.0  # a weight times 1e6 > 65504


def _underflow(params) -> None:
    params[0][2] = 1e-9


def _ragged(params) -> None:
    params[1] = params[1][:3]


SAFETY_CASES = {
    **{f"conv_bn-{name}": SafetyCase(functools.partial(conv_bn_model, **layout), "conv_bn")
       for name, layout in LAYOUTS.items()},
    "conv_bn-fp16": SafetyCase(functools.partial(_with_params, np.float16), "conv_bn"),
    "conv_bn-read-twice": SafetyCase(functools.partial(_conv_then_bn_out, "read"), "conv_bn",
                                     Reason.PRODUCER_HAS_OTHER_CONSUMERS),
    "conv_bn-graph-output": SafetyCase(functools.partial(_conv_then_bn_out, "output"), "conv_bn",
                                       Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT),
    "conv_bn-weight-fed": SafetyCase(_weight_fed, "conv_bn", Reason.WEIGHT_NOT_CONSTANT),
    "conv_bn-mean-computed": SafetyCase(_mean_computed, "conv_bn", Reason.PARAMS_NOT_CONSTANT),
    "conv_bn-overridable": SafetyCase(functools.partial(_conv_then_bn_out, overridable=True), "conv_bn",
                                      Reason.OVERRIDABLE_INITIALIZER),
    "conv_bn-training": SafetyCase(functools.partial(_conv_then_bn_out, opset=15, training_mode=1, n_out=3),
                                   "conv_bn", Reason.TRAINING_MODE),
    "conv_bn-mean-read": SafetyCase(functools.partial(_conv_then_bn_out, "mean", opset=15, n_out=3), "conv_bn",
                                    Reason.EXTRA_OUTPUTS_USED, runnable=False),  # ORT rejects the node
    "conv_bn-spatial-zero": SafetyCase(_spatial_zero, "conv_bn", Reason.SPATIAL_ZERO),
    "conv_bn-overflow": SafetyCase(functools.partial(_with_params, np.float16, _overflow), "conv_bn",
                                   Reason.FOLD_OVERFLOW, runnable=False),  # the fp16 BN output is inf
    "conv_bn-underflow": SafetyCase(functools.partial(_with_params, np.float16, _underflow), "conv_bn",
                                    Reason.FOLD_UNDERFLOW),
    "conv_bn-ragged": SafetyCase(functools.partial(_with_params, np.float32, _ragged), "conv_bn",
                                 Reason.SHAPE_MISMATCH, runnable=False),  # ORT rejects such a model
    "conv_bn-integer-params": SafetyCase(functools.partial(_with_params, np.float32, _integer_mean), "conv_bn",
                                         Reason.UNSUPPORTED_DTYPE, runnable=False),  # invalid ONNX
    "conv_bn-no-neighbour": SafetyCase(_after_add, None, Reason.NO_FOLDABLE_NEIGHBOUR),
}
