"""compare_arrays (written for speed: float32 BLAS sums, a per-channel short cut) against a plain float64 oracle."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bnfold.verification.compare import SCALE_FLOOR, Tolerance, compare_arrays

TOL = Tolerance(atol=1e-4, rtol=1e-5)


def oracle(r: np.ndarray, c: np.ndarray, tol: Tolerance) -> dict[str, float]:
    """The rule of bnfold.verification.compare's docstring, spelled out element by element in float64."""
    r64, c64 = r.astype(np.float64), c.astype(np.float64)
    finite = np.isfinite(r64) & np.isfinite(c64)
    odd = ~finite
    same = (r64[odd] == c64[odd]) | (np.isnan(r64[odd]) & np.isnan(c64[odd]))
    rz, cz = np.where(finite, r64, 0.0), np.where(finite, c64, 0.0)
    diff = np.abs(cz - rz)
    if r.ndim >= 2:
        own = np.abs(rz).reshape(r.shape[0], r.shape[1], -1).max(axis=(0, 2))
        scale = np.maximum(own, SCALE_FLOOR).reshape((1, -1) + (1,) * (r.ndim - 2))
    else:
        scale = max(float(np.abs(rz).max()), SCALE_FLOOR)
    threshold = tol.atol * scale + tol.rtol * np.abs(rz)
    norms = math.sqrt(float(rz @ rz.ravel() if rz.ndim == 1 else np.sum(rz * rz))), math.sqrt(float(np.sum(cz * cz)))
    cosine = 1.0 if norms == (0.0, 0.0) else 0.0 if 0.0 in norms else float(np.sum(rz * cz)) / (norms[0] * norms[1])
    return {
        "mismatched": int(np.count_nonzero(diff > threshold)) + int(np.count_nonzero(~same)),
        "near_boundary": int(np.count_nonzero(np.abs(diff - threshold) <= 1e-5 * threshold)),
        "new_nonfinite": int(np.count_nonzero(np.isfinite(r64) & ~np.isfinite(c64))),
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.sum() / max(1, np.count_nonzero(finite))),
        "cosine": max(-1.0, min(1.0, cosine)),
    }


@st.composite
def pairs(draw) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=4)))
    magnitude = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e4]))
    r = (rng.standard_normal(shape) * magnitude).astype(np.float32)
    noise = draw(st.sampled_from([0.0, 1e-7, 1e-5, 1e-4, 1e-3, 1.0]))
    c = (r + rng.standard_normal(shape) * noise * max(1.0, magnitude)).astype(np.float32)
    if draw(st.booleans()):  # scale one channel, as a faulty fold would
        channel = rng.integers(shape[1]) if len(shape) >= 2 else slice(None)
        index = (slice(None), channel) if len(shape) >= 2 else channel
        c[index] = c[index] * np.float32(draw(st.sampled_from([1.0001, 1.01, 2.0])))
    for target in draw(st.lists(st.sampled_from(["r", "c", "both"]), max_size=3)):
        flat = rng.integers(r.size)
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        for array in ((r, c) if target == "both" else (r,) if target == "r" else (c,)):
            array.reshape(-1)[flat] = value
    return r, c


@settings(max_examples=300, deadline=None)
@given(pairs())
def test_fast_statistics_agree_with_the_float64_oracle(pair):
    r, c = pair
    fast, slow = compare_arrays(r, c, TOL), oracle(r, c, TOL)
    assert abs(fast.mismatched - slow["mismatched"]) <= slow["near_boundary"]
    assert fast.new_nonfinite == slow["new_nonfinite"]
    assert math.isclose(fast.max_abs, slow["max_abs"], rel_tol=1e-6, abs_tol=1e-30)
    assert math.isclose(fast.mean_abs, slow["mean_abs"], rel_tol=1e-5, abs_tol=1e-30)
    assert abs(fast.cosine - slow["cosine"]) <= 1e-6


def test_cosine_keeps_digits_float32_sums_would_lose():
    rng = np.random.default_rng(0)
    r = rng.standard_normal(2_000_000).astype(np.float32)
    c = r.copy()
    c[::1000] += np.float32(1e-3)  # 1 - cosine is ~5e-10: far below float32 rounding of |r|^2
    expected = float(r.astype(np.float64) @ c.astype(np.float64)) / (
        np.linalg.norm(r.astype(np.float64)) * np.linalg.norm(c.astype(np.float64)))
    got = compare_arrays(r, c, TOL).cosine
    assert got < 1.0 and abs((1 - got) - (1 - expected)) <= 1e-3 * (1 - expected)


def test_identical_tensors_have_cosine_exactly_one_and_no_error():
    r = np.random.default_rng(1).standard_normal((2, 8, 5, 5)).astype(np.float32)
    sample = compare_arrays(r, r.copy(), TOL)
    assert sample.cosine == 1.0 and sample.max_abs == 0.0 and sample.mismatched == 0 and sample.max_rel == 0.0


def test_the_channel_short_cut_still_counts_every_element_out_of_tolerance():
    r = np.ones((1, 3, 4, 4), dtype=np.float32)
    c = r.copy()
    c[0, 1, :2, :] += np.float32(2e-4)  # 8 elements beyond atol * 1 + rtol * 1 = 1.1e-4
    c[0, 2, 0, 0] += np.float32(5e-5)  # within tolerance
    assert compare_arrays(r, c, TOL).mismatched == 8
