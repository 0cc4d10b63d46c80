"""A hypothesis strategy for small, valid, CNN-like ONNX graphs to fuzz ``bnfold.optimize`` with.

One input [1 | 2 | "N", 1..8, 5..12 (1-D or 2-D)], fp32 or fp16, opset 13/15/17, then 1..8 blocks, each on
the newest tensor or (1 in 4) an older one: Conv (kernel 1/3, stride, dilation, explicit/absent/VALID/SAME
padding, dense/grouped/depthwise, bias or not), ConvTranspose (group, output_padding), BatchNormalization
(variance log-uniform 1e-4..1e2, negative and zero gammas), Relu, Add/Mul of two same-shaped tensors (or one
read twice), Mul/Add/Sub/Div by a constant (per channel, scalar, or along the last axis), Concat on channels,
GlobalAveragePool + Flatten + Gemm (transB, alpha, beta, C [M] / [1, M] / [1] / none), MatMul ([N, K] @ W or
W @ [N, C, L]), dead Identity nodes, ``patterns``' blocks. Producers are followed by a BN 3 times in 4.
Constants are initializers, Constant nodes, Casts of wider Constants or overridable initializers; weights,
biases and BN parameter sets are sometimes shared; unread tensors and some intermediate ones are outputs.

Hypothesis draws the structure, so failures shrink to a few nodes; a numpy generator seeded by one drawn integer
fills the values. Shapes are tracked and declared on every graph output; ``full_check=True`` proves them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import helper

from tests.builders import GraphBuilder
from tests.fuzz.patterns import bn_after, decomposed_bn, join_bn, transparent

MAX_CHANNELS = 16
BN = "BatchNormalization"
SOURCES = ("initializer", "constant", "cast", "overridable")  # where a constant lives


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple  # (batch, channels, *spatial); batch is an int or the symbol "N"

    @property
    def channels(self) -> int:
        return self.shape[1]


class FuzzGraph:
    """A GraphBuilder plus what keeps a random graph valid: tensor shapes, readers, shareable weights."""

    def __init__(self, draw: Callable, dtype: np.dtype, opset: int, seed: int) -> None:
        self.draw, self.dtype = draw, np.dtype(dtype)
        self.b = GraphBuilder(opset=opset, seed=seed, dtype=dtype)
        self.rng = self.b.rng
        self.pool: list[Tensor] = []
        self.read: set[str] = set()
        self.shareable: dict[tuple, str] = {}  # (kind, shape) -> initializer name
        self.bn_params: dict[int, list[str]] = {}  # channels -> the four parameters of the last BN that wide

    def graph_input(self, shape: tuple) -> Tensor:
        return self._add(self.b.input("x", list(shape)), shape)

    def _add(self, name: str, shape: tuple) -> Tensor:
        tensor = Tensor(name, tuple(shape))
        self.pool.append(tensor)
        return tensor

    def pick(self) -> Tensor:
        """Mostly the newest tensor (a chain); further back makes branches and multi-reader tensors."""
        if self.draw(st.integers(0, 3)) < 3:
            return self.pool[-1]
        return self.pool[-1 - self.draw(st.integers(0, len(self.pool) - 1))]

    def partner(self, x: Tensor, same: Callable[[Tensor], bool]) -> Tensor:
        """Another tensor *same* accepts (a residual / concat partner), else *x* itself (read twice)."""
        options = [t for t in self.pool if t != x and same(t)]
        return self.draw(st.sampled_from([x, *options]))

    def emit(self, op: str, inputs: list[str], shape: tuple, **attrs) -> Tensor:
        self.read.update(inputs)
        return self._add(self.b.node(op, inputs, **attrs), shape)

    def source(self) -> str:
        """Mostly a plain initializer (what failures shrink to); sometimes any other SOURCES entry."""
        return SOURCES[max(0, self.draw(st.integers(-4, len(SOURCES) - 1)))]

    def constant(self, array: np.ndarray, source: str) -> str:
        """*array* (float64) in the graph dtype, from an initializer, Constant node, Cast of a wider
        constant, or an overridable initializer (a graph input with a default)."""
        value = np.asarray(array, dtype=np.float64)
        if source == "initializer":
            return self.b.init(value.astype(self.dtype))
        if source == "overridable":
            return self.b.init(value.astype(self.dtype), overridable=True)
        if source == "constant":
            return self.b.constant(value.astype(self.dtype))
        wider = np.float64 if self.dtype == np.float32 else np.float32
        to = helper.np_dtype_to_tensor_dtype(self.dtype)
        return self.b.node("Cast", [self.b.constant(value.astype(wider))], to=to)

    def weight(self, shape: tuple, fan_in: int, kind: str) -> str:
        """He-initialised weight; sometimes the very initializer an earlier node of this shape uses."""
        key = (kind, shape)
        if key in self.shareable and self.draw(st.booleans()):
            return self.shareable[key]
        value = self.rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
        if self.draw(st.integers(0, 9)) == 0:  # rare: exercise refusals
            return self.constant(value, self.draw(st.sampled_from(SOURCES)))
        name = self.b.init(value.astype(self.dtype))
        self.shareable[key] = name
        return name

    def bias(self, size: int) -> list[str]:
        """No bias, a new one, or (sometimes) the bias initializer of an earlier node of this size."""
        if not self.draw(st.booleans()):
            return []
        key = ("bias", size)
        if key not in self.shareable or not self.draw(st.booleans()):
            self.shareable[key] = self.b.init((self.rng.standard_normal(size) * 0.1).astype(self.dtype))
        return [self.shareable[key]]

    def finish(self) -> onnx.ModelProto:
        """Every unread tensor is a graph output, and so are some intermediate ones; check strictly."""
        exposed = [t for t in self.pool[1:] if t.name not in self.read or self.draw(st.integers(0, 7)) == 7]
        for t in exposed or self.pool[-1:]:  # all read by dead ends: the newest tensor, at least
            self.b.output(t.name, shape=[d if isinstance(d, str) else int(d) for d in t.shape])
        model = self.b.build()
        onnx.checker.check_model(model, full_check=True)
        return model


# ---- ops: each reads tensor x (and maybe a partner) and returns what it made ----------------------------

def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _conv_channels(g: FuzzGraph, c_in: int) -> tuple[int, int]:
    """(group, c_out): dense, grouped or depthwise (with channel multiplier)."""
    mode = g.draw(st.sampled_from(("dense", "grouped", "depthwise")))
    if mode == "dense":
        return 1, g.draw(st.integers(1, 8))
    if mode == "depthwise":
        return c_in, c_in * g.draw(st.integers(1, max(1, MAX_CHANNELS // c_in // 2)))
    group = g.draw(st.sampled_from(_divisors(c_in)))
    return group, group * g.draw(st.integers(1, max(1, 8 // group)))


def _window(g: FuzzGraph, rank: int) -> tuple[list[int], list[int], list[int]]:
    kernel = [g.draw(st.sampled_from((1, 3))) for _ in range(rank)]
    strides = [g.draw(st.sampled_from((1, 2))) for _ in range(rank)]
    dilations = [g.draw(st.sampled_from((1, 2))) for _ in range(rank)]
    return kernel, strides, dilations


def _conv_padding(g: FuzzGraph, spatial: tuple, kernel: list[int], strides: list[int],
                  dilations: list[int]) -> tuple[dict, list[int]]:
    """(padding attributes, output spatial shape): explicit pads, none at all, or an auto_pad mode."""
    mode = g.draw(st.sampled_from(("pads", "unpadded", "VALID", "SAME_UPPER", "SAME_LOWER")))
    rank = len(spatial)
    pads = [g.draw(st.integers(0, 1)) if mode == "pads" else 0 for _ in range(2 * rank)]
    for axis, size in enumerate(spatial):
        if mode.startswith("SAME"):
            dilations[axis] = 1  # onnxruntime has no dilated SAME padding
        if size + pads[axis] + pads[axis + rank] < (kernel[axis] - 1) * dilations[axis] + 1:
            kernel[axis], dilations[axis] = 1, 1  # the window would not fit the input: make it 1
    if mode.startswith("SAME"):
        return {"auto_pad": mode}, [-(-size // s) for size, s in zip(spatial, strides, strict=True)]
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    out = [(size + pads[i] + pads[i + rank] - extent[i]) // strides[i] + 1 for i, size in enumerate(spatial)]
    if mode == "VALID":
        return {"auto_pad": "VALID"}, out
    if mode == "unpadded" and g.draw(st.booleans()):
        return {}, out  # pads attribute absent: zero by default
    return {"pads": pads}, out


def conv(g: FuzzGraph, x: Tensor) -> Tensor:
    group, c_out = _conv_channels(g, x.channels)
    kernel, strides, dilations = _window(g, len(x.shape) - 2)
    padding, out = _conv_padding(g, x.shape[2:], kernel, strides, dilations)
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dilations, group=group, **padding)
    w_shape = (c_out, x.channels // group, *kernel)
    w = g.weight(w_shape, int(np.prod(w_shape[1:])), "Conv")
    return g.emit("Conv", [x.name, w, *g.bias(c_out)], (x.shape[0], c_out, *out), **attrs)


def conv_transpose(g: FuzzGraph, x: Tensor) -> Tensor:
    group, c_out = _conv_channels(g, x.channels)
    spatial = x.shape[2:]
    kernel, strides, dilations = _window(g, len(spatial))
    strides = [s if size <= 7 else 1 for s, size in zip(strides, spatial, strict=True)]  # keep the output small
    output_padding = [g.draw(st.integers(0, s - 1)) for s in strides]
    pads = [g.draw(st.integers(0, 1)) for _ in range(2 * len(spatial))]
    full = [s * (size - 1) + op + (k - 1) * d + 1
            for size, s, op, k, d in zip(spatial, strides, output_padding, kernel, dilations, strict=True)]
    out = [n - pads[i] - pads[i + len(spatial)] for i, n in enumerate(full)]
    if min(out) < 1:  # cropped away entirely: drop the pads
        out, pads = full, [0] * len(pads)
    w_shape = (x.channels, c_out // group, *kernel)
    w = g.weight(w_shape, int(np.prod(w_shape[1:])), "ConvTranspose")
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dilations, group=group, pads=pads)
    if any(output_padding):
        attrs["output_padding"] = output_padding
    return g.emit("ConvTranspose", [x.name, w, *g.bias(c_out)], (x.shape[0], c_out, *out), **attrs)


def batch_norm(g: FuzzGraph, x: Tensor) -> Tensor:
    """Trained-looking statistics: variance log-uniform 1e-4..1e2, negative (rarely zero) gammas."""
    c, rng = x.channels, g.rng
    gamma = rng.uniform(0.1, 2.0, c) * rng.choice([-1.0, 1.0], c)
    if g.draw(st.integers(0, 7)) == 0:
        gamma[rng.integers(c)] = 0.0
    beta, mean = rng.standard_normal(c) * 0.5, rng.standard_normal(c) * 0.5
    var = np.exp(rng.uniform(np.log(1e-4), np.log(1e2), c))
    style = g.draw(st.sampled_from(("initializer", "constant", "cast", "mixed", "shared")))
    if style == "shared" and c in g.bn_params:  # the very parameters of an earlier BN
        params = g.bn_params[c]
    else:  # "mixed": each parameter from its own source
        sources = [g.source() if style == "mixed" else style.replace("shared", "initializer") for _ in range(4)]
        params = g.bn_params[c] = [g.constant(v, src) for v, src in zip((gamma, beta, mean, var), sources, strict=True)]
    epsilon = g.draw(st.sampled_from((1e-5, 1e-3)))
    return g.emit(BN, [x.name, *params], x.shape, epsilon=epsilon)


def dead_end(g: FuzzGraph, x: Tensor) -> Tensor:
    """An Identity whose output nothing reads and no graph output lists (exporters leave such nodes)."""
    g.read.update([x.name, g.b.node("Identity", [x.name])])
    return x


def relu(g: FuzzGraph, x: Tensor) -> Tensor:
    return g.emit("Relu", [x.name], x.shape)


def affine_constant(g: FuzzGraph, x: Tensor) -> Tensor:
    """x (op) c with c per-channel, scalar, or (rarely) along the last axis, which is not per channel."""
    op = g.draw(st.sampled_from(("Mul", "Add", "Sub", "Div")))
    rank, c = len(x.shape), x.channels
    layouts = {"[C,1..]": (c,) + (1,) * (rank - 2), "[1,C,1..]": (1, c) + (1,) * (rank - 2),
               "scalar": (), "[1]": (1,), "last axis": (x.shape[-1],)}
    shape = layouts[g.draw(st.sampled_from(sorted(layouts)))]
    rng = g.rng
    if op in ("Mul", "Div"):
        value = rng.uniform(0.25, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    else:
        value = rng.standard_normal(shape)
    const = g.constant(value, g.source())
    first = op != "Div" and g.draw(st.booleans())
    return g.emit(op, [const, x.name] if first else [x.name, const], x.shape)


def residual(g: FuzzGraph, x: Tensor) -> Tensor:
    """x + y (or rarely x * y) for a same-shaped y: a skip connection, or the same tensor twice."""
    y = g.partner(x, lambda t: t.shape == x.shape)
    op = g.draw(st.sampled_from(("Add", "Mul")))
    return g.emit(op, [x.name, y.name], x.shape)


def concat(g: FuzzGraph, x: Tensor) -> Tensor:
    def fits(t: Tensor) -> bool:
        return len(t.shape) == len(x.shape) and t.shape[2:] == x.shape[2:] and t.shape[0] == x.shape[0]

    y = g.partner(x, fits)
    shape = (x.shape[0], x.channels + y.channels, *x.shape[2:])
    return g.emit("Concat", [x.name, y.name], shape, axis=1)


def to_flat(g: FuzzGraph, x: Tensor) -> Tensor:
    pooled = g.emit("GlobalAveragePool", [x.name], (x.shape[0], x.channels) + (1,) * (len(x.shape) - 2))
    return g.emit("Flatten", [pooled.name], (x.shape[0], x.channels), axis=1)


def gemm(g: FuzzGraph, x: Tensor) -> Tensor:
    """Gemm on [N, K] (after GlobalAveragePool + Flatten when given a feature map)."""
    if len(x.shape) > 2:
        x = to_flat(g, x)
    k, m = x.channels, g.draw(st.integers(1, 8))
    trans_b = g.draw(st.booleans())
    w = g.weight((m, k) if trans_b else (k, m), k, "Gemm")
    bias_shape = g.draw(st.sampled_from(((m,), (1, m), (1,), None)))
    bias = [] if bias_shape is None else [g.b.init((g.rng.standard_normal(bias_shape) * 0.1).astype(g.dtype))]
    attrs = dict(transB=int(trans_b), alpha=g.draw(st.sampled_from((1.0, 0.5))),
                 beta=g.draw(st.sampled_from((1.0, 2.0))))
    return g.emit("Gemm", [x.name, w, *bias], (x.shape[0], m), **attrs)


def matmul(g: FuzzGraph, x: Tensor) -> Tensor:
    """x[N, K] @ W[K, M], or W[M, C] @ x[N, C, L] (a 1x1 Conv written as MatMul) on 1-D feature maps."""
    m = g.draw(st.integers(1, 8))
    if len(x.shape) == 2:
        return g.emit("MatMul", [x.name, g.weight((x.channels, m), x.channels, "MatMul")], (x.shape[0], m))
    if len(x.shape) == 3:
        w = g.weight((m, x.channels), x.channels, "MatMulLeft")
        return g.emit("MatMul", [w, x.name], (x.shape[0], m, x.shape[2]))
    return gemm(g, x)


# Repeats weight the draw toward the layers BN folds into; the first entry is what failures shrink to.
SPATIAL_OPS = (conv, batch_norm, conv, conv_transpose, relu, affine_constant, residual, conv, concat, batch_norm,
               gemm, matmul, dead_end, transparent, decomposed_bn, join_bn)
FLAT_OPS = (gemm, batch_norm, relu, affine_constant, residual, concat, matmul, dead_end, transparent, decomposed_bn)


@st.composite
def cnn_models(draw: Callable, max_ops: int = 8, dtypes: tuple = (np.float32, np.float16)) -> onnx.ModelProto:
    """A valid ONNX model (one of *dtypes*) of 1..max_ops random CNN blocks on one [N, C, *spatial] input."""
    dtype = draw(st.sampled_from(dtypes))
    rank = draw(st.sampled_from((2, 1)))
    g = FuzzGraph(draw, dtype, draw(st.sampled_from((17, 15, 13))), draw(st.integers(0, 2**31 - 1)))
    batch = draw(st.sampled_from((1, 2, "N")))
    g.graph_input((batch, draw(st.integers(1, 8)), *[draw(st.integers(5, 12)) for _ in range(rank)]))
    for _ in range(draw(st.integers(1, max_ops))):
        x = g.pick()
        op = draw(st.sampled_from(SPATIAL_OPS if len(x.shape) > 2 else FLAT_OPS))
        y = op(g, x)
        if op in (conv, conv_transpose, gemm, matmul) and draw(st.integers(0, 3)) < 3:
            bn_after(g, y)
        if g.pool[-1].channels > MAX_CHANNELS:
            break
    if len(g.pool) == 1:  # only dead ends so far: compute something
        relu(g, g.pool[0])
    return g.finish()
