"""Fuzz blocks for the folds of issue 12: ops that only move data (so a BN behind them folds through
them), Keras-style decomposed BN (Mul then Add by per-channel constants), and the hook that sometimes
puts a data-moving op between a producer and its BN. Shapes are tracked exactly, as in ``graphs``."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


def transparent(g, x):
    """Identity; a Reshape that keeps the shape (tf2onnx) or lifts [N, C] to [N, C, 1, 1]; a Transpose of
    the spatial axes; an Unsqueeze of a trailing axis: each keeps the channel axis at 1."""
    rank = len(x.shape)
    kind = g.draw(st.sampled_from(("Identity", "Reshape", "Transpose", "Unsqueeze")))
    if kind == "Reshape":
        target = (0, x.channels, 1, 1) if rank == 2 else (0, x.channels, *x.shape[2:-1], -1)
        shape = (*x.shape, 1, 1) if rank == 2 else x.shape
        return g.emit("Reshape", [x.name, g.b.init(np.array(target, dtype=np.int64))], shape)
    if kind == "Transpose" and rank >= 4:
        perm = [0, 1, *range(rank - 1, 1, -1)]
        return g.emit("Transpose", [x.name], tuple(x.shape[p] for p in perm), perm=perm)
    if kind == "Unsqueeze" and rank < 4:
        axes = g.b.init(np.array([rank], dtype=np.int64))
        if g.b.opset < 13:
            return g.emit("Identity", [x.name], x.shape)
        return g.emit("Unsqueeze", [x.name, axes], (*x.shape, 1))
    return g.emit("Identity", [x.name], x.shape)


def decomposed_bn(g, x):
    """BN as Keras 3 (and tf2onnx's Dense -> BN) writes it: Mul by a scale, then Add a shift, per channel."""
    c, rank = x.channels, len(x.shape)
    shape = (c,) if rank == 2 else (1, c) + (1,) * (rank - 2)
    scale = g.rng.uniform(0.25, 2.0, shape) * g.rng.choice([-1.0, 1.0], shape)
    z = g.emit("Mul", [x.name, g.constant(scale, g.source())], x.shape)
    return g.emit("Add", [z.name, g.constant(g.rng.standard_normal(shape), g.source())], x.shape)


def _pointwise(g, x, c_out: int):
    kernel = [1] * (len(x.shape) - 2)
    w = g.weight((c_out, x.channels, *kernel), x.channels, "Pointwise")
    return g.emit("Conv", [x.name, w, *g.bias(c_out)], (x.shape[0], c_out, *x.shape[2:]), kernel_shape=kernel)


def join_bn(g, x):
    """Two pointwise Convs of x joined by a channel Concat or an Add, then a BN or a decomposed BN: the
    CSP-block and pre-activation shapes concat_bn and add_bn fold across."""
    if len(x.shape) < 3:
        return transparent(g, x)
    join = g.draw(st.sampled_from(("Concat", "Add")))
    sizes = [g.draw(st.integers(1, 4)) for _ in range(2)]
    if join == "Add":
        sizes[1] = sizes[0]
    a, b = (_pointwise(g, x, size) for size in sizes)
    channels = sum(sizes) if join == "Concat" else sizes[0]
    attrs = {"axis": 1} if join == "Concat" else {}
    joined = g.emit(join, [a.name, b.name], (x.shape[0], channels, *x.shape[2:]), **attrs)
    if g.draw(st.booleans()):
        return decomposed_bn(g, joined)
    from tests.fuzz.graphs import batch_norm  # graphs imports this module: resolve at call time

    return batch_norm(g, joined)


def bn_after(g, y):
    """What follows a producer: a BN, sometimes behind a data-moving op, sometimes decomposed (Keras 3)."""
    from tests.fuzz.graphs import batch_norm

    choice = g.draw(st.integers(0, 6))
    moved = transparent(g, y) if choice in (1, 2) else y
    return decomposed_bn(g, moved) if choice in (0, 2) else batch_norm(g, moved)
