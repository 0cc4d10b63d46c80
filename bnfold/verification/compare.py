"""Comparing one reference tensor with one candidate tensor, and keeping the worst over samples.

The pass/fail rule, per element, for elements finite in both tensors::

    |c - r| <= atol * scale + rtol * |r|
    scale = max(1, max|r| over the element's channel, in every sample)

The channel is the element's index on axis 1 (C of NCHW activations, F of [N, F]; the whole tensor
below rank 2), and its magnitude is taken over all samples: a [1, F] tensor has one element per
channel per sample, which may be small by cancellation of large terms whose rounding it still carries.
So ``atol`` is relative to the magnitude of the channel the element belongs to: a
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
from bnfold.verification.cosine import cosine, cosine_from_difference

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
    verdict: str | None = None  # per-layer: "pass" | "drift" (only upstream error) | "fail" (diverges here)
    tolerance: str = ""  # what it was judged by (end to end: dtype, depth, floor; local: the layer's arithmetic)
    local_error_vs_tolerance: float | None = None  # per-layer: worst local error / local tolerance

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
    cosine: float
    mismatched: int
    new_nonfinite: int
    top1: float | None
    compared: int
    channel_magnitude: np.ndarray  # max|r| per channel (one value below rank 2)
    channel_error: np.ndarray  # max |c - r| per channel


def compare_arrays(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance,
                   channel_magnitude: np.ndarray | None = None) -> _Sample:
    """Statistics for one sample; shapes must already match. Non-numeric tensors must be equal.

    *channel_magnitude* (max|r| per channel over all samples) replaces this sample's own where larger.
    Verification compares every fold's tensor on every sample, so this is written for few passes over
    the data: one BLAS dot product doubles as the check that everything is finite, and the element-wise
    tolerance test runs only for a channel whose worst error exceeds ``atol`` alone.
    """
    if reference.dtype.kind in "OSU" or candidate.dtype.kind in "OSU":
        unequal = int(np.count_nonzero(np.asarray(reference) != np.asarray(candidate)))
        zero = np.zeros(1)
        return _Sample(0.0, 0.0, 0.0, 0.0, 1.0 if unequal == 0 else 0.0, unequal, 0, None, int(reference.size),
                       zero, zero)
    # float32 arithmetic is ample for half/single tensors (differences of close values are exact);
    # integers and doubles are compared in float64.
    work = np.float32 if reference.dtype.itemsize <= 4 and reference.dtype.kind in "fV" else np.float64
    r: np.ndarray = np.asarray(reference, dtype=work).ravel()
    c: np.ndarray = np.asarray(candidate, dtype=work).ravel()
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf and overflow are sorted out just below
        diff = c - r
        squared = float(np.dot(diff, diff))
    if math.isfinite(squared):
        pairs = _Pairs(r, c, diff, cosine_from_difference(r, c, diff, squared), finite_count=r.size)
    else:  # rare: a NaN/inf somewhere, or differences too large for float32 to square
        pairs = _finite_pairs(r, c)
    shape = np.shape(reference)
    sample = _statistics(pairs, shape, tolerance, channel_magnitude)
    sample.top1 = _top1(reference, candidate)
    return sample


@dataclass
class _Pairs:
    """Flattened reference/candidate values, non-finite pairs already judged and zeroed."""

    r: np.ndarray
    c: np.ndarray
    diff: np.ndarray  # c - r, signed
    cosine: float
    finite_count: int
    new_nonfinite: int = 0
    odd_mismatch: int = 0  # non-finite pairs that differ


def _finite_pairs(r: np.ndarray, c: np.ndarray) -> _Pairs:
    """Judge pairs where either side is not finite (must be identical), then zero them out."""
    finite_r = np.isfinite(r)
    both = finite_r & np.isfinite(c)
    odd = ~both
    same = (r[odd] == c[odd]) | (np.isnan(r[odd]) & np.isnan(c[odd]))
    r, c = np.where(both, r, 0), np.where(both, c, 0)
    return _Pairs(r, c, np.subtract(c, r, dtype=np.float64),  # finite values far apart can overflow float32
                  cosine(r, c), finite_count=int(np.count_nonzero(both)),
                  new_nonfinite=int(np.count_nonzero(finite_r & ~both)), odd_mismatch=int(np.count_nonzero(~same)))


def _statistics(pairs: _Pairs, shape: tuple[int, ...], tolerance: Tolerance,
                channel_magnitude: np.ndarray | None) -> _Sample:
    diff = np.abs(pairs.diff, out=pairs.diff).reshape(shape)
    abs_r = np.abs(pairs.r, dtype=diff.dtype).reshape(shape)
    own = per_channel_max(abs_r)
    channel_error = per_channel_max(diff)
    magnitudes = own if channel_magnitude is None else np.maximum(own, channel_magnitude)
    mismatched = pairs.odd_mismatch + _mismatches(diff, abs_r, channel_error, scale_of(magnitudes), tolerance)
    magnitude = float(own.max()) if diff.size else 0.0
    rel_floor = max(REL_FLOOR * magnitude, float(np.finfo(abs_r.dtype).tiny))
    if diff.size:  # abs_r is not needed any more: it becomes the relative error
        np.maximum(abs_r, rel_floor, out=abs_r)
        np.divide(diff, abs_r, out=abs_r)
    return _Sample(
        max_abs=float(channel_error.max()) if diff.size else 0.0,
        max_rel=float(abs_r.max()) if diff.size else 0.0,
        mean_abs=float(diff.sum(dtype=np.float64) / pairs.finite_count) if pairs.finite_count else 0.0,
        magnitude=magnitude,
        cosine=pairs.cosine,
        mismatched=mismatched,
        new_nonfinite=pairs.new_nonfinite,
        top1=None,
        compared=diff.size,
        channel_magnitude=own,
        channel_error=channel_error,
    )


def _mismatches(diff: np.ndarray, abs_r: np.ndarray, channel_error: np.ndarray, scale: np.ndarray,
                tolerance: Tolerance) -> int:
    """Elements with ``diff > atol * scale + rtol * |r|``. A channel whose largest error is below
    ``atol * scale`` alone has none (the margin covers rounding of the float32 threshold)."""
    if np.all(channel_error < tolerance.atol * scale * (1 - 1e-6)):
        return 0
    threshold = abs_r * tolerance.rtol
    threshold += tolerance.atol * _broadcast(scale, abs_r.ndim)
    return int(np.count_nonzero(diff > threshold))


def per_channel_max(a: np.ndarray) -> np.ndarray:
    """max over everything but axis 1, as a float64 vector (one value below rank 2)."""
    if a.ndim < 2:
        return np.array([a.max() if a.size else 0.0], dtype=np.float64)
    batch, channels = a.shape[:2]
    if a.size == 0:
        return np.zeros(channels)
    return a.reshape(batch, channels, -1).max(axis=(0, 2)).astype(np.float64)


def scale_of(magnitudes: np.ndarray) -> np.ndarray:
    return np.maximum(magnitudes, SCALE_FLOOR)


def _broadcast(per_channel: np.ndarray, ndim: int) -> np.ndarray | float:
    if ndim < 2:
        return float(per_channel[0])
    return per_channel.reshape((1, per_channel.size) + (1,) * (ndim - 2))


def _top1(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    if reference.ndim != 2 or reference.shape[1] < 2 or reference.shape[0] == 0:
        return None
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    return float(np.mean(ref.argmax(axis=1) == cand.argmax(axis=1)))


class WorstCase:
    """Folds per-sample statistics of one tensor into its worst case over samples.

    Samples are first judged on their own channel magnitudes. The scale over all samples can only be
    larger, so only a sample that failed needs judging again (``to_rejudge``) with ``channel_magnitude``.
    """

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...], tolerance: Tolerance) -> None:
        self.name, self.dtype, self.shape, self.tolerance = name, dtype, shape, tolerance
        self.samples: dict[int, _Sample] = {}
        self.note: str | None = None
        self.basis = ""  # what the tolerance was derived from, for the report

    def add(self, index: int, sample: _Sample) -> None:
        self.samples[index] = sample

    @property
    def channel_magnitude(self) -> np.ndarray | None:
        """max|r| per channel over all samples; None when samples differ in channel count."""
        vectors = [s.channel_magnitude for s in self.samples.values()]
        if not vectors or len({v.shape for v in vectors}) != 1:
            return None
        return np.maximum.reduce(vectors)

    def to_rejudge(self) -> list[int]:
        overall = self.channel_magnitude
        if self.note is not None or overall is None:
            return []
        return [i for i, s in self.samples.items()
                if s.mismatched and np.any(scale_of(overall) > scale_of(s.channel_magnitude))]

    def result(self) -> TensorComparison:
        if self.note is not None or not self.samples:
            return TensorComparison.failed(self.name, self.note or "not compared", dtype=self.dtype, shape=self.shape)
        s = list(self.samples.values())
        overall = self.channel_magnitude
        scaled = [float((x.channel_error / scale_of(x.channel_magnitude if overall is None else overall)).max())
                  for x in s]
        top1 = [x.top1 for x in s if x.top1 is not None]
        mismatched = sum(x.mismatched for x in s)
        new_nonfinite = sum(x.new_nonfinite for x in s)
        return TensorComparison(
            name=self.name, dtype=self.dtype, shape=self.shape,
            max_abs_error=max(x.max_abs for x in s),
            max_rel_error=max(x.max_rel for x in s),
            mean_abs_error=max(x.mean_abs for x in s),
            error_vs_magnitude=max(_ratio(x.max_abs, x.magnitude) for x in s),
            cosine=min(x.cosine for x in s),
            mismatched=mismatched,
            new_nonfinite=new_nonfinite,
            top1_agreement=min(top1) if top1 else None,
            passed=mismatched == 0 and new_nonfinite == 0,
            compared=sum(x.compared for x in s),
            magnitude=max(x.magnitude for x in s),
            max_scaled_error=max(scaled),
            atol=self.tolerance.atol,
            rtol=self.tolerance.rtol,
            tolerance=self.basis,
        )


def _ratio(error: float, magnitude: float) -> float:
    if magnitude > 0:
        return error / magnitude
    return 0.0 if error == 0 else math.inf
