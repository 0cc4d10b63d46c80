"""Cosine similarity of a reference and a candidate tensor (flattened), as verification reports it.

Verification computes it for every fold's tensor on every sample, so the usual case (two nearly equal
tensors) takes a fast path built on float32 dot products of the difference; far-apart tensors and
overflowing sums take float64 sums.
"""

from __future__ import annotations

import math

import numpy as np


def cosine_from_difference(r: np.ndarray, c: np.ndarray, diff: np.ndarray, squared: float) -> float:
    """Cosine similarity from two fast dot products (r.r and d.r; *squared* is d.d; |c|^2 and d.c follow).

    Written as ``1 - (|d|^2 - (|c| - |r|)^2) / (2 |r| |c|)`` with ``|c| - |r| = d.(c + r) / (|c| + |r|)``:
    the small terms come from dot products of the small difference itself, so a cosine of 1 - 1e-12
    survives sums rounded in float32. Tensors far apart (failures, mostly) take float64 sums instead.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        rr, dr = float(np.dot(r, r)), float(np.dot(diff, r))
    cross = 2.0 * dr + squared  # d.(c + r), as c = r + d
    cc = rr + cross  # |c|^2 = |r|^2 + 2 d.r + |d|^2
    if not (math.isfinite(rr) and math.isfinite(cross)) or cc < 0.0:
        return cosine(r, c)  # float32 sums overflowed, or c ~ 0 rounded |c|^2 below zero
    if rr == 0.0 or cc == 0.0:
        return 1.0 if rr == cc else 0.0
    norm_r, norm_c = math.sqrt(rr), math.sqrt(cc)
    if squared > 1e-2 * norm_r * norm_c:  # far apart: the two terms cancel, float32 sums no longer suffice
        return cosine(r, c)
    delta = cross / (norm_r + norm_c)
    return max(-1.0, min(1.0, 1.0 - (squared - delta * delta) / (2.0 * norm_r * norm_c)))


def cosine(r: np.ndarray, c: np.ndarray) -> float:
    """Cosine similarity with float64 sums: the slow, sure way for the rare cases above."""
    def dot(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.einsum("i,i->", a, b, dtype=np.float64))

    norm_r, norm_c = math.sqrt(dot(r, r)), math.sqrt(dot(c, c))
    if norm_r == 0.0 and norm_c == 0.0:
        return 1.0
    if norm_r == 0.0 or norm_c == 0.0:
        return 0.0
    return max(-1.0, min(1.0, dot(r, c) / (norm_r * norm_c)))
