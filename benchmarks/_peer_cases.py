"""The targeted cases of ``peer_compare.py``: one tiny model per claim we make about peer tools.

Each builder makes a few-node graph with ``onnx.helper`` and seeded numpy, opset 17, IR version 8, concrete
shapes (so no tool is held back by symbolic dims). BN statistics are non-trivial (means off zero, variances
spread, negative gammas) because freshly initialised BN (mean 0, var 1) makes any fold look exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
BN = "BatchNormalization"


@dataclass(frozen=True)
class Case:
    """A model and what judging a tool's result on it needs."""

    name: str
    model: onnx.ModelProto
    what: str  # one line for the report's legend
    counted: tuple[str, ...] = (BN,)  # op types whose disappearance means "folded"
    tolerance: float = 1e-4  # max error relative to max|original output|
    override: dict[str, float] = field(default_factory=dict)  # overridable initializer -> factor to feed


class _Graph:
    """Collects nodes, initializers and value infos; keeps each builder to the lines that matter."""

    def __init__(self, seed: int, dtype: type = np.float32) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=self.dtype), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        fan_in = int(np.prod(shape[1:])) or 1
        return self.const(name, self.rng.standard_normal(shape) / np.sqrt(fan_in))

    def bn_arrays(self, channels: int) -> list[np.ndarray]:
        """scale, B, mean, var: |gamma / sqrt(var)| in [0.5, 1.5], some gammas negative, means off zero."""
        var = 10.0 ** self.rng.uniform(-2, 1, channels)
        factor = self.rng.uniform(0.5, 1.5, channels) * np.where(self.rng.random(channels) < 0.3, -1, 1)
        return [factor * np.sqrt(var), self.rng.normal(0, 0.2, channels), self.rng.normal(0, 0.5, channels), var]

    def bn(self, x: str, y: str, channels: int, prefix: str = "bn") -> str:
        names = [self.const(f"{prefix}.{p}", a) for p, a in zip(("scale", "B", "mean", "var"),
                                                               self.bn_arrays(channels), strict=True)]
        self.node(BN, [x, *names], [y], epsilon=1e-5)
        return y

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs: object) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(self.nodes)}", **attrs))

    def model(self, inputs: dict[str, tuple[int, ...]], outputs: dict[str, tuple[int, ...]],
              extra_inputs: tuple[onnx.ValueInfoProto, ...] = ()) -> onnx.ModelProto:
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))
        graph = helper.make_graph(
            self.nodes, "case",
            [helper.make_tensor_value_info(n, elem, s) for n, s in inputs.items()] + list(extra_inputs),
            [helper.make_tensor_value_info(n, elem, s) for n, s in outputs.items()], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="bnfold-peer-cases")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model


IMAGE = (1, 3, 8, 8)


def conv_bn(seed: int) -> Case:
    g = _Graph(seed)
    g.node("Conv", ["x", g.weight("w", (4, 3, 3, 3)), g.const("b", g.rng.normal(0, 0.1, 4))], ["c"], pads=[1] * 4)
    g.node("Relu", [g.bn("c", "n", 4)], ["y"])
    return Case("conv_bn", g.model({"x": IMAGE}, {"y": (1, 4, 8, 8)}), "Conv -> BN -> Relu")


def convtranspose_bn(seed: int) -> Case:
    g = _Graph(seed)
    g.node("ConvTranspose", ["x", g.weight("w", (4, 3, 3, 3))], ["c"], strides=[2, 2])
    g.bn("c", "y", 3)
    return Case("convtranspose_bn", g.model({"x": (1, 4, 5, 5)}, {"y": (1, 3, 11, 11)}), "ConvTranspose -> BN")


def gemm_bn(seed: int) -> Case:
    g = _Graph(seed)
    g.node("Gemm", ["x", g.weight("w", (5, 6)), g.const("b", g.rng.normal(0, 0.1, 5))], ["c"], transB=1)
    g.bn("c", "y", 5)
    return Case("gemm_bn", g.model({"x": (2, 6)}, {"y": (2, 5)}), "Gemm (x @ W^T + b) -> BN on [N, F]")


def matmul_bn(seed: int) -> Case:
    g = _Graph(seed)
    g.node("MatMul", ["x", g.weight("w", (6, 5))], ["c"])
    g.bn("c", "y", 5)
    return Case("matmul_bn", g.model({"x": (2, 6)}, {"y": (2, 5)}), "MatMul x[N,F] @ W[F,G] -> BN on [N, G]")


def bn_conv(seed: int) -> Case:
    g = _Graph(seed)
    g.bn("x", "n", 3)
    g.node("Conv", ["n", g.weight("w", (4, 3, 3, 3)), g.const("b", g.rng.normal(0, 0.1, 4))], ["y"])
    return Case("bn_conv", g.model({"x": IMAGE}, {"y": (1, 4, 6, 6)}), "BN -> Conv (pads 0)")


def paddle_affine(seed: int) -> Case:
    g = _Graph(seed)
    g.node("Conv", ["x", g.weight("w", (4, 3, 3, 3))], ["c"], pads=[1] * 4)
    scale, shift, *_ = g.bn_arrays(4)
    g.node("Mul", ["c", g.const("s", scale.reshape(1, 4, 1, 1))], ["m"])
    g.node("Add", ["m", g.const("t", shift.reshape(1, 4, 1, 1))], ["y"])
    return Case("paddle_affine", g.model({"x": IMAGE}, {"y": (1, 4, 8, 8)}),
                "Conv -> Mul[1,C,1,1] -> Add[1,C,1,1] (Paddle's BN export)", counted=("Mul", "Add"))


def constant_node_weights(seed: int) -> Case:
    g = _Graph(seed)
    g.weight("w", (4, 3, 3, 3))
    g.bn("c", "y", 4)
    for tensor in g.inits:  # every initializer becomes a Constant node producing the same name
        g.nodes.insert(0, helper.make_node("Constant", [], [tensor.name], name=f"const_{tensor.name}", value=tensor))
    g.inits.clear()
    g.node("Conv", ["x", "w"], ["c"], pads=[1] * 4)
    g.nodes.append(g.nodes.pop(-2))  # topological order: Constants, Conv, BN
    return Case("constant_node_weights", g.model({"x": IMAGE}, {"y": (1, 4, 8, 8)}),
                "Conv -> BN, weight and BN parameters from Constant nodes")


def fp16_overflow(seed: int) -> Case:
    """The true result is finite (x is scaled by 1e-3 first), but weight * gamma / sqrt(var + eps) is ~7.5e4."""
    g = _Graph(seed, np.float16)
    g.node("Mul", ["x", g.const("k", np.array(1e-3))], ["xs"])
    g.node("Conv", ["xs", g.const("w", 250.0 * np.sign(g.rng.standard_normal((4, 4, 1, 1))))], ["c"])
    g.node(BN, ["c", g.const("bn.scale", np.ones(4)), g.const("bn.B", g.rng.normal(0, 0.2, 4)),
                g.const("bn.mean", g.rng.normal(0, 0.1, 4)), g.const("bn.var", np.full(4, 1e-6))], ["y"],
           epsilon=1e-5)
    return Case("fp16_overflow", g.model({"x": (1, 4, 6, 6)}, {"y": (1, 4, 6, 6)}),
                "fp16 Conv -> BN whose folded weight (~7.5e4) exceeds fp16's 65504", tolerance=1e-2)


def overridable_bn(seed: int) -> Case:
    case = conv_bn(seed)
    model = case.model
    params = [t for t in model.graph.initializer if t.name.startswith("bn.")]
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in params)
    onnx.checker.check_model(model, full_check=True)
    return Case("overridable_bn", model, "Conv -> BN whose parameters are also graph inputs (overridable)",
                override={"bn.scale": 2.0})


def shared_weight(seed: int) -> Case:
    g = _Graph(seed)
    w = g.weight("w", (4, 3, 3, 3))
    for i in (1, 2):
        g.node("Conv", ["x", w], [f"c{i}"], pads=[1] * 4)
        g.bn(f"c{i}", f"y{i}", 4, prefix=f"bn{i}")
    out = (1, 4, 8, 8)
    return Case("shared_weight", g.model({"x": IMAGE}, {"y1": out, "y2": out}),
                "two Convs read one weight initializer, each followed by its own BN")


def bn_output_is_graph_output(seed: int) -> Case:
    g = _Graph(seed)
    g.node("Conv", ["x", g.weight("w", (4, 3, 3, 3))], ["c"], pads=[1] * 4)
    g.node("Relu", [g.bn("c", "bn_out", 4)], ["relu_out"])
    out = (1, 4, 8, 8)
    return Case("bn_output_is_graph_output", g.model({"x": IMAGE}, {"bn_out": out, "relu_out": out}),
                "Conv -> BN -> Relu; the BN output and the Relu output are both graph outputs")


def conv_two_readers(seed: int) -> Case:
    g = _Graph(seed)
    g.node("Conv", ["x", g.weight("w", (4, 3, 3, 3))], ["c"], pads=[1] * 4)
    g.node("Add", ["c", g.bn("c", "n", 4)], ["y"])
    return Case("conv_two_readers", g.model({"x": IMAGE}, {"y": (1, 4, 8, 8)}),
                "Conv output read by BN and by an Add (with the BN output)")


# Names the tools were seen to give a new weight/bias when folding conv_bn_bait's Conv -> BN (with its default
# names): bnfold, onnxscript, onnxslim, onnxruntime, then onnxsim's and onnxoptimizer's numbered names.
BAIT_NAMES = ("Conv_0_bias", "w_bias", "n_weight", "n_bias", "ConvBnFusion_W_w", "ConvBnFusion_BN_B_bn.B",
              "_v_10", "_v_11", "_v_12", "_v_13", "12", "13", "14", "15", "16", "17")


def name_bait(seed: int) -> Case:
    """Does a tool check that a name is free before creating a tensor? The model already holds tensors named as
    each tool names its folded weights; a tool that does not check defines a name twice or reads the wrong one."""
    g = _Graph(seed)
    g.node("Conv", ["x", g.weight("w", (4, 3, 3, 3))], ["c"], pads=[1] * 4)
    g.node("Relu", [g.bn("c", "n", 4)], ["y"])
    baits = [g.const(name, g.rng.normal(0, 0.1, (1, 3, 1, 1))) for name in BAIT_NAMES]
    g.node("Sum", ["x", *baits], ["z"])
    return Case("name_bait", g.model({"x": IMAGE}, {"y": (1, 4, 8, 8), "z": IMAGE}),
                "Conv (no bias) -> BN -> Relu, beside a Sum reading 16 small constants that carry the names the "
                "tools give folded weights (`_peer_cases.BAIT_NAMES`)")


BUILDERS: tuple[Callable[[int], Case], ...] = (
    conv_bn, convtranspose_bn, gemm_bn, matmul_bn, bn_conv, paddle_affine, constant_node_weights,
    fp16_overflow, overridable_bn, shared_weight, bn_output_is_graph_output, conv_two_readers, name_bait,
)


def all_cases(seed: int = 0) -> list[Case]:
    return [build(seed) for build in BUILDERS]
