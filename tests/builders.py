"""A few-lines-per-test model builder, an onnxruntime runner, and dtype-aware comparisons."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


class GraphBuilder:
    """Build a small ONNX model: ``b = GraphBuilder(); x = b.input("x", [1, 3, 8, 8]); y = b.conv(x, 4)``."""

    def __init__(self, opset: int = 17, seed: int = 0, dtype=np.float32) -> None:
        self.opset, self.dtype = opset, np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.channels: dict[str, int] = {}
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def input(self, name: str, shape: Sequence[int | str], dtype=None) -> str:
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype or self.dtype))
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        if len(shape) > 1 and isinstance(shape[1], int):
            self.channels[name] = shape[1]
        return name

    def init(self, array: np.ndarray, name: str | None = None, *, overridable: bool = False) -> str:
        name = name or self._name("w")
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        if overridable:
            self.input(name, list(np.shape(array)), np.asarray(array).dtype)
        return name

    def constant(self, array: np.ndarray, name: str | None = None) -> str:
        name = name or self._name("c")
        self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array))))
        return name

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, name: str | None = None, **attrs) -> str:
        name = name or self._name(op.lower())
        outs = [f"{name}_out"] + [f"{name}_out{i}" for i in range(1, n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0]

    def weight(self, shape: Sequence[int], scale: float | None = None) -> np.ndarray:
        fan_in = int(np.prod(shape[1:])) or 1
        return (self.rng.standard_normal(shape) * (scale or np.sqrt(2.0 / fan_in))).astype(self.dtype)

    def conv(self, x: str, c_out: int, k: int | Sequence[int] = 3, *, group: int = 1, bias: bool = True,
             dims: int = 2, **attrs) -> str:
        c_in = self.channels[x]
        kernel = [k] * dims if isinstance(k, int) else list(k)
        inputs = [x, self.init(self.weight([c_out, c_in // group, *kernel]))]
        if bias:
            inputs.append(self.init(self.rng.standard_normal(c_out).astype(self.dtype) * 0.1))
        out = self.node("Conv", inputs, group=group, **attrs)
        self.channels[out] = c_out
        return out

    def conv_transpose(self, x: str, c_out: int, k: int | Sequence[int] = 3, *, group: int = 1,
                       bias: bool = True, dims: int = 2, **attrs) -> str:
        """ConvTranspose; its weight is [C_in, C_out/group, k...] (the layout naive folders get wrong)."""
        c_in = self.channels[x]
        kernel = [k] * dims if isinstance(k, int) else list(k)
        inputs = [x, self.init(self.weight([c_in, c_out // group, *kernel]))]
        if bias:
            inputs.append(self.init(self.rng.standard_normal(c_out).astype(self.dtype) * 0.1))
        out = self.node("ConvTranspose", inputs, group=group, **attrs)
        self.channels[out] = c_out
        return out

    def bn_params(self, c: int, dtype=None) -> list[np.ndarray]:
        dtype = np.dtype(dtype or self.dtype)
        gamma = self.rng.uniform(0.5, 1.5, c) * self.rng.choice([-1.0, 1.0], c)
        beta = self.rng.standard_normal(c) * 0.5
        mean = self.rng.standard_normal(c) * 0.5
        var = np.exp(self.rng.uniform(np.log(1e-3), np.log(10.0), c))
        return [a.astype(dtype) for a in (gamma, beta, mean, var)]

    def bn(self, x: str, c: int | None = None, *, params: Sequence[np.ndarray] | None = None, param_dtype=None,
           overridable: bool = False, epsilon: float = 1e-5, **attrs) -> str:
        c = c or self.channels[x]
        values = params if params is not None else self.bn_params(c, param_dtype)
        names = [self.init(v, overridable=overridable) for v in values]
        out = self.node("BatchNormalization", [x, *names], epsilon=epsilon, **attrs)
        self.channels[out] = c
        return out

    def output(self, name: str, dtype=None, shape: Sequence[int | str] | None = None) -> str:
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype or self.dtype))
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def build(self, ir_version: int = 8) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "test", self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = ir_version
        return model


def session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    """An onnxruntime CPU session with graph optimizations off (so ORT doesn't fold anything itself)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def feeds_for(model: onnx.ModelProto, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    """Seeded standard-normal feeds for every non-initializer input (symbolic dims -> batch)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else batch for d in inp.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        feeds[inp.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


def run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def tolerance(dtype) -> float:
    """Error allowed relative to the output's magnitude: fp32 ~1e-5, fp16 ~1e-2."""
    return {np.dtype(np.float16): 1e-2, np.dtype(np.float64): 1e-10}.get(np.dtype(dtype), 1e-5)


def assert_equivalent(original: onnx.ModelProto, folded: onnx.ModelProto, seed: int = 0) -> None:
    """Run both in onnxruntime and compare every output at a dtype-aware tolerance vs magnitude."""
    feeds = feeds_for(original, seed)
    for a, b in zip(run(original, feeds), run(folded, feeds), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        magnitude = max(np.abs(a64).max(), 1e-12)
        error = np.abs(a64 - b64).max() / magnitude
        assert error <= tolerance(a.dtype), f"error {error:.3g} vs magnitude exceeds {tolerance(a.dtype)}"


def as_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every float16 initializer, Constant value and declared type widened to float32 (Cast
    nodes untouched): the reference that shows how much an fp16 model loses to rounding."""
    wide = onnx.ModelProto()
    wide.CopyFrom(model)
    tensors = list(wide.graph.initializer)
    tensors += [a.t for n in wide.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    for t in tensors:
        if t.data_type == TensorProto.FLOAT16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    for info in [*wide.graph.input, *wide.graph.output, *wide.graph.value_info]:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT16:
            info.type.tensor_type.elem_type = TensorProto.FLOAT
    return wide


def assert_fp16_no_worse(original: onnx.ModelProto, folded: onnx.ModelProto, *, slack: float = 1e-3,
                         seed: int = 0) -> None:
    """The folded fp16 model is no further from an fp32 run of the same weights than the unfolded fp16
    model is, give or take *slack* relative to the output's magnitude (both round, differently)."""
    feeds = feeds_for(original, seed)
    wide_feeds = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in feeds.items()}
    truths = run(as_float32(original), wide_feeds)
    for truth, before, after in zip(truths, run(original, feeds), run(folded, feeds), strict=True):
        assert after.dtype == before.dtype and after.shape == before.shape
        magnitude = max(np.abs(truth).max(), 1e-12)
        err_before = np.abs(before.astype(np.float64) - truth).max() / magnitude
        err_after = np.abs(after.astype(np.float64) - truth).max() / magnitude
        assert err_after <= err_before + slack, f"folded error {err_after:.3g} vs unfolded {err_before:.3g}"


def assert_refused(model: onnx.ModelProto, reason, *, runnable: bool = True, **options):
    """optimize() reports *reason* for the model's one candidate site and leaves its graph exactly as it was
    (BN included); with *runnable*, onnxruntime also agrees on the outputs. Returns the OptimizeResult."""
    from bnfold import optimize

    result = optimize(model, verify=False, **options)
    assert [site.reason for site in result.report.refused] == [reason], result.report.refused
    assert not result.report.applied
    assert op_count(result.model, "BatchNormalization") == op_count(model, "BatchNormalization") >= 1
    assert result.model.graph == model.graph
    if runnable:
        assert_equivalent(model, result.model)
    return result


def op_count(model: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in model.graph.node)


FLOAT = TensorProto.FLOAT
