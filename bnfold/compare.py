"""Comparing one reference tensor with one candidate tensor, and keeping the worst over samples.

The pass/fail rule, per element, for elements finite in both tensors::

    |c - r| <= atol * scale + rtol * |r|
    scale = max(1, max|r| over the element's channel)

The channel is the element's index on axis 1 (C of NCHW activations, F of [N, F]; the whole tensor
below rank 2). So ``atol`` is relative to the magnitude of the channel the element belongs to: a
layer's output is judged channel by channel, as BatchNormalization scales it, and a 1 % fault in a
quiet channel is not hidden by a loud neighbour; near-zero elements are judged on their channel's
scale, not their own. Below magnitude 1 ``atol`` is absolute: probabilities and masks near 0 must not
demand more than float rounding of the logits behind them can give. Where either side is not finite
the two must be identical (NaN vs NaN, +inf vs +inf); a NaN/inf the reference does not have is
counted in ``new_nonfinite`` and always fails. Defaults per dtype, and the measurements behind them,
are in :mod:`bnfold.verification`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bnfold.report import ReportMixin

SCALE_FLOOR = 1.0  # atol scales with the channel's max|r| only above 1: below, it is absolute
REL_FLOOR = 1e-3  # max_rel_error divides by max(|r|, REL_FLOOR * max|r|): near-zero refs don't explode it


@dataclass(frozen=True)
class Tolerance:
    atol: float  # relative to max(1, max|reference| of the element's channel)
    rtol: float  # relative to each element's |reference|


@dataclass(frozen=True)
class TensorComparison(ReportMixin):
    """How far one candidate tensor is from the reference, worst case over all samples."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    mean_abs_error: float
    error_vs_magnitude: float  # max_abs_error / max|reference|
    cosine: float
    mismatched: int  # elements out of tolerance, summed over samples
    new_nonfinite: int  # NaN/inf in the candidate where the reference is finite, summed over samples
    top1_agreement: float | None  # only for [N, classes > 1] tensors
    passed: bool
    compared: int = 0  # elements compared, summed over samples
    magnitude: float = 0.0  # max|reference|, largest over samples
    max_scaled_error: float = 0.0  # max |c - r| / scale: what atol is compared with
    atol: float = 0.0
    rtol: float = 0.0
    note: str | None = None  # why it failed without numbers (missing, shape differs, not run)

    @classmethod
    def failed(cls, name: str, note: str, *, dtype: str = "", shape: tuple[int, ...] = ()) -> TensorComparison:
        """A comparison that could not be made, which counts as a failure."""
        nan = math.nan
        return cls(name, dtype, shape, nan, nan, nan, nan, nan, 0, 0, None, False, max_scaled_error=nan, note=note)


@dataclass
class _Sample:
    max_abs: float
    max_rel: float
    mean_abs: float
    magnitude: float
    max_scaled: float
    cosine: float
    mismatched: int
    new_nonfinite: int
    top1: float | None
    compared: int


def compare_arrays(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance) -> _Sample:
    """Statistics for one sample; shapes must already match. Non-numeric tensors must be equal."""
    if reference.dtype.kind in "OSU" or candidate.dtype.kind in "OSU":
        unequal = int(np.count_nonzero(np.asarray(reference) != np.asarray(candidate)))
        return _Sample(0.0, 0.0, 0.0, 0.0, 0.0, 1.0 if unequal == 0 else 0.0, unequal, 0, None, int(reference.size))
    # float32 arithmetic is ample for half/single tensors (differences of close values are exact);
    # sums below accumulate in float64. Integers and doubles are compared in float64.
    work = np.float32 if reference.dtype.itemsize <= 4 and reference.dtype.kind in "fV" else np.float64
    r = np.asarray(reference, dtype=work)
    c = np.asarray(candidate, dtype=work)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf and overflow are sorted out just below
        diff = c - r
    odd_mismatch = new_nonfinite = 0
    finite_count = r.size
    if not np.isfinite(diff).all():  # rare: judge the non-finite pairs, then zero them out
        finite_r = np.isfinite(r)
        both = finite_r & np.isfinite(c)
        new_nonfinite = int(np.count_nonzero(finite_r & ~both))
        odd = ~both
        same = (r[odd] == c[odd]) | (np.isnan(r[odd]) & np.isnan(c[odd]))
        odd_mismatch = int(np.count_nonzero(~same))
        finite_count = int(np.count_nonzero(both))
        r, c = np.where(both, r, 0), np.where(both, c, 0)
        diff = np.subtract(c, r, dtype=np.float64)  # finite values far apart can overflow float32
    np.abs(diff, out=diff)
    abs_r = np.abs(r)
    scale = channel_scale(abs_r)
    threshold = abs_r * tolerance.rtol
    threshold += tolerance.atol * scale
    mismatched = int(np.count_nonzero(diff > threshold)) + odd_mismatch
    del threshold
    magnitude = float(abs_r.max()) if r.size else 0.0
    rel_floor = REL_FLOOR * magnitude if magnitude > 0 else np.finfo(np.float64).tiny
    return _Sample(
        max_abs=float(diff.max()) if diff.size else 0.0,
        max_rel=float((diff / np.maximum(abs_r, rel_floor)).max()) if diff.size else 0.0,
        mean_abs=float(diff.sum(dtype=np.float64) / finite_count) if finite_count else 0.0,
        magnitude=magnitude,
        max_scaled=_max_scaled(diff, scale),
        cosine=_cosine(r.ravel(), c.ravel()),
        mismatched=mismatched,
        new_nonfinite=new_nonfinite,
        top1=_top1(reference, candidate),
        compared=int(np.size(reference)),
    )


def channel_scale(abs_r: np.ndarray) -> np.ndarray | float:
    """max(1, max|r|) per channel (axis 1), shaped to broadcast against *abs_r*; whole tensor below rank 2."""
    if abs_r.size == 0:
        return SCALE_FLOOR
    if abs_r.ndim < 2:
        return max(float(abs_r.max()), SCALE_FLOOR)
    batch, channels = abs_r.shape[:2]
    per_channel = abs_r.reshape(batch, channels, -1).max(axis=(0, 2))
    return np.maximum(per_channel, SCALE_FLOOR).reshape((1, channels) + (1,) * (abs_r.ndim - 2))


def _max_scaled(diff: np.ndarray, scale: np.ndarray | float) -> float:
    """max |c - r| / scale, reduced per channel first so no full-size temporary is made."""
    if diff.size == 0:
        return 0.0
    if np.ndim(scale) == 0:
        return float(diff.max() / scale)
    per_channel = diff.reshape(diff.shape[0], diff.shape[1], -1).max(axis=(0, 2))
    return float((per_channel / np.ravel(scale)).max())


def _cosine(r: np.ndarray, c: np.ndarray) -> float:
    def dot(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.einsum("i,i->", a, b, dtype=np.float64))

    norm_r, norm_c = math.sqrt(dot(r, r)), math.sqrt(dot(c, c))
    if norm_r == 0.0 and norm_c == 0.0:
        return 1.0
    if norm_r == 0.0 or norm_c == 0.0:
        return 0.0
    return max(-1.0, min(1.0, dot(r, c) / (norm_r * norm_c)))


def _top1(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    if reference.ndim != 2 or reference.shape[1] < 2 or reference.shape[0] == 0:
        return None
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    return float(np.mean(ref.argmax(axis=1) == cand.argmax(axis=1)))


class WorstCase:
    """Folds per-sample statistics of one tensor into its worst case over samples."""

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...], tolerance: Tolerance) -> None:
        self.name, self.dtype, self.shape, self.tolerance = name, dtype, shape, tolerance
        self.samples: list[_Sample] = []
        self.note: str | None = None

    def add(self, sample: _Sample) -> None:
        self.samples.append(sample)

    def result(self) -> TensorComparison:
        if self.note is not None or not self.samples:
            return TensorComparison.failed(self.name, self.note or "not compared", dtype=self.dtype, shape=self.shape)
        s = self.samples
        max_abs = max(x.max_abs for x in s)
        ratios = [_ratio(x.max_abs, x.magnitude) for x in s]
        top1 = [x.top1 for x in s if x.top1 is not None]
        mismatched = sum(x.mismatched for x in s)
        new_nonfinite = sum(x.new_nonfinite for x in s)
        return TensorComparison(
            name=self.name, dtype=self.dtype, shape=self.shape,
            max_abs_error=max_abs,
            max_rel_error=max(x.max_rel for x in s),
            mean_abs_error=max(x.mean_abs for x in s),
            error_vs_magnitude=max(ratios),
            cosine=min(x.cosine for x in s),
            mismatched=mismatched,
            new_nonfinite=new_nonfinite,
            top1_agreement=min(top1) if top1 else None,
            passed=mismatched == 0 and new_nonfinite == 0,
            compared=sum(x.compared for x in s),
            magnitude=max(x.magnitude for x in s),
            max_scaled_error=max(x.max_scaled for x in s),
            atol=self.tolerance.atol,
            rtol=self.tolerance.rtol,
        )


def _ratio(error: float, magnitude: float) -> float:
    if magnitude > 0:
        return error / magnitude
    return 0.0 if error == 0 else math.inf
