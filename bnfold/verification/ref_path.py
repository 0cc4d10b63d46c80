"""The reference's own side of a site: the original nodes between the fed inputs and the site's output, and
how large their intermediate values are once carried to the output.

The original Conv->BatchNormalization rounds the convolution's output ``v`` before scaling it; where ``v``
sits near a large running mean, that rounding (``u |v| |s|``) dwarfs the output itself. So each intermediate
tensor ``t`` of the reference's path adds ``max|t| x gain`` per output channel to the tolerance's level, with
the gain of the nodes after it: ``|gamma / sqrt(var + eps)|`` for BatchNormalization, ``|c|`` for a Mul by a
constant, ``1 / |c|`` for a Div, the L2 norm of each output channel's weights for a linear layer (independent
roundings add like a random walk), 1 for anything else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from bnfold.run.lending import DetachedModel

MAX_PATH_NODES = 6
LINEAR = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class ReferenceWeights:
    """The reference's initializers by name, read on demand (lent arrays, inline data or external files)."""

    def __init__(self, source, structure: onnx.ModelProto) -> None:
        self.arrays = source.arrays if isinstance(source, DetachedModel) else {}
        self.inits = {t.name: t for t in structure.graph.initializer}
        for node in structure.graph.node:  # Constant nodes hold weights too
            if node.op_type == "Constant" and node.output:
                attr = next((a for a in node.attribute if a.name == "value" and a.t.dims is not None), None)
                if attr is not None and attr.type == onnx.AttributeProto.TENSOR:
                    self.inits.setdefault(node.output[0], attr.t)
        self.folder = os.path.dirname(os.path.abspath(os.fspath(source))) \
            if isinstance(source, (str, os.PathLike)) else ""
        self._cache: dict[str, np.ndarray | None] = {}

    def get(self, name: str) -> np.ndarray | None:
        if name in self.arrays:
            return self.arrays[name]
        if name not in self._cache:
            init = self.inits.get(name)
            try:
                self._cache[name] = None if init is None else numpy_helper.to_array(init, self.folder)
            except Exception:  # noqa: BLE001 - unreadable: no gain known, the path term falls back to 1
                self._cache[name] = None
        return self._cache[name]


def reference_path(ref_graph_index: Mapping[str, onnx.NodeProto], output: str, fed: set[str],
                   initializers: set[str]) -> list[onnx.NodeProto]:
    """The reference's nodes from *fed* (and initializers) to *output*, output's producer first; [] where
    the walk does not close within MAX_PATH_NODES."""
    path, pending, seen = [], [output], set()
    while pending:
        name = pending.pop()
        node = ref_graph_index.get(name)
        if node is None or id(node) in seen:
            if node is None and name not in fed and name not in initializers:
                return []
            continue
        seen.add(id(node))
        path.append(node)
        if len(path) > MAX_PATH_NODES:
            return []
        pending += [n for n in node.input if n and n not in fed and n not in initializers]
    return path


def intermediates(path: list[onnx.NodeProto], output: str) -> list[str]:
    return [o for node in path for o in node.output if o and o != output]


def batchnorm_inverse(path: list[onnx.NodeProto], output: str, tensor: str,
                      weights: ReferenceWeights) -> tuple[np.ndarray, np.ndarray] | None:
    """``(s, shift)`` with ``tensor = output / s + shift`` per channel where *output* is an inference-mode
    BatchNormalization of *tensor* (``(v - mean) * s + beta``) whose scales are all finite and nonzero: the
    magnitude of *tensor* then follows from *output*'s range (:func:`inverted_peak`), and *tensor* need not be
    captured. None otherwise."""
    node = path[0] if path else None
    if node is None or node.op_type != "BatchNormalization" or node.output[0] != output or node.input[0] != tensor:
        return None
    attrs = {a.name: a for a in node.attribute}
    if any(o for o in node.output[1:]) or any(attrs[k].i != d for k, d in (("spatial", 1), ("training_mode", 0))
                                                if k in attrs):
        return None
    params = [weights.get(n) for n in node.input[1:5]]
    if any(p is None for p in params):
        return None
    gamma, beta, mean, var = (np.asarray(p, dtype=np.float64).ravel() for p in params)
    eps = attrs["epsilon"].f if "epsilon" in attrs else 1e-5
    with np.errstate(all="ignore"):
        scale = gamma / np.sqrt(var + eps)
        shift = mean - beta / scale
    if len({gamma.size, beta.size, mean.size, var.size}) != 1 or not (np.isfinite(shift).all() and scale.all()):
        return None
    return scale, shift


def inverted_peak(inverse: tuple[np.ndarray, np.ndarray], output: np.ndarray) -> np.ndarray:
    """max|tensor| per channel from *output*'s per-channel range (``tensor = output / s + shift`` is monotonic
    in *output*, so its extremes sit at *output*'s); non-finite values count as 0. In float64: the captured
    tensor's own magnitude up to rounding (``u |beta / s|`` at most, far below the tolerance's ``u |beta|`` term)."""
    scale, shift = inverse
    if output.size == 0:
        return np.zeros(scale.size)
    low, high = finite_range(output, scale.size)
    peak = np.maximum(np.abs(low / scale + shift), np.abs(high / scale + shift))
    return peak if output.ndim >= 2 and output.shape[1] == scale.size else np.asarray([peak.max()])


def finite_range(value: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) per channel on axis 1, in float64, non-finite values counted as 0; over the whole tensor
    where axis 1 isn't *channels*."""
    low, high = _range(value, channels)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):  # min and max propagate NaN and inf
        low, high = _range(np.where(np.isfinite(value), value, 0), channels)
    return low, high


def _range(value: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    if value.ndim >= 2 and value.shape[1] == channels:
        axes = (0, *range(2, value.ndim))
        return value.min(axis=axes).astype(np.float64), value.max(axis=axes).astype(np.float64)
    return np.asarray(value.min(), dtype=np.float64), np.asarray(value.max(), dtype=np.float64)


def carried(path: list[onnx.NodeProto], tensor: str, magnitude: np.ndarray, output: str,
            weights: ReferenceWeights) -> np.ndarray:
    """*magnitude* (max|tensor| per channel) carried through the path's nodes to *output*: a per-channel
    vector (or a 1-element one) of the output's scale."""
    reader = {n: node for node in path for n in node.input if n}
    c, name = np.asarray(magnitude, dtype=np.float64).ravel(), tensor
    for _ in range(MAX_PATH_NODES + 1):
        if name == output:
            return c
        node = reader.get(name)
        if node is None:
            return c
        c = _through(node, name, c, weights)
        name = node.output[0]
    return c


def _through(node: onnx.NodeProto, name: str, c: np.ndarray, weights: ReferenceWeights) -> np.ndarray:
    op = node.op_type
    others = [weights.get(n) for n in node.input if n and n != name]
    if op == "BatchNormalization" and node.input[0] == name and all(o is not None for o in others[:4]):
        gamma, _, _, var = (np.asarray(o, dtype=np.float64).ravel() for o in others[:4])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        return _times(c, np.abs(gamma) / np.sqrt(var + eps))
    if op in ("Mul", "Div") and others and others[0] is not None:
        k = np.abs(np.asarray(others[0], dtype=np.float64))
        k = 1.0 / np.maximum(k, np.finfo(np.float64).tiny) if op == "Div" else k
        return _times(c, _per_channel(k))
    if op in LINEAR and others and others[0] is not None:
        w = np.asarray(others[0], dtype=np.float64)
        if op == "Conv":
            norm = np.sqrt((w.reshape(w.shape[0], -1) ** 2).sum(axis=1))
        elif op == "ConvTranspose":
            norm = np.sqrt((np.moveaxis(w, 1, 0).reshape(w.shape[1], -1) ** 2).sum(axis=1))
        else:
            norm = np.sqrt((w.reshape(-1, w.shape[-1]) ** 2).sum(axis=0)) if w.ndim >= 2 else np.abs(w)
        return float(c.max()) * norm
    return c


def _per_channel(k: np.ndarray) -> np.ndarray:
    """A constant as a per-channel vector ([C], [C,1,1], [1,C,1,1]), else its largest value."""
    squeezed = np.squeeze(k)
    return squeezed.ravel() if squeezed.ndim == 1 else np.asarray([k.max() if k.size else 0.0])


def _times(c: np.ndarray, k: np.ndarray) -> np.ndarray:
    if c.size == k.size or c.size == 1 or k.size == 1:
        return c * k
    return np.asarray([c.max() * k.max()])


def constant_terms(path: list[onnx.NodeProto], output: str, weights: ReferenceWeights) -> list[np.ndarray]:
    """Magnitudes the reference's constants add inside the path, carried to *output*: BatchNormalization's
    ``|s * mean| + |beta|`` (it computes ``(v - mean) * s + beta``; a dead channel cancels them), a linear
    layer's bias and the constant of an Add/Sub."""
    terms = []
    for node in path:
        if node.op_type == "BatchNormalization":
            params = [weights.get(n) for n in node.input[1:5]]
            if any(p is None for p in params):
                continue
            gamma, beta, mean, var = (np.asarray(p, dtype=np.float64).ravel() for p in params)
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            level = np.abs(gamma / np.sqrt(var + eps) * mean) + np.abs(beta)
        elif node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and node.input[2]:
            bias = weights.get(node.input[2])  # added after the sum: a bias that cancels it leaves its rounding
            if bias is None:
                continue
            level = np.abs(np.asarray(bias, dtype=np.float64)).ravel()
        elif node.op_type in ("Add", "Sub"):
            found = [weights.get(n) for n in node.input if n]
            consts = [np.abs(np.asarray(c, dtype=np.float64)) for c in found if c is not None]
            if not consts:
                continue
            level = _per_channel(consts[0])
        else:
            continue
        terms.append(carried(path, node.output[0], level, output, weights))
    return terms
