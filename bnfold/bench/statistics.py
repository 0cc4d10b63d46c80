"""Statistics for benchmark samples: latency summaries and a paired bootstrap for speedups.

Pure numpy, no onnxruntime: the numbers here decide what users believe about a speedup, so they are kept
small enough to test against synthetic samples with known answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Cap on the number of values one vectorised resampling chunk holds, so that long --duration runs
# (tens of thousands of rounds) do not allocate gigabytes for the bootstrap.
_CHUNK_VALUES = 4_000_000


@dataclass(frozen=True)
class LatencySummary:
    """Order statistics of one variant's latencies, in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    count: int


@dataclass(frozen=True)
class SpeedupEstimate:
    """Ratio of medians (baseline / candidate) and its bootstrap confidence interval."""

    speedup: float
    ci_low: float
    ci_high: float
    rounds: int


def summarize_ns(samples_ns: np.ndarray) -> LatencySummary:
    """Summarise latencies given in nanoseconds (as perf_counter_ns measures them)."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise ValueError("no samples to summarise")
    p50, p90, p99 = np.percentile(ms, [50.0, 90.0, 99.0])
    return LatencySummary(
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        min_ms=float(ms.min()),
        count=int(ms.size),
    )


def throughput_per_s(batch: int, latency_ms: float) -> float:
    """Items per second when one run of *batch* items takes *latency_ms*."""
    return batch * 1000.0 / latency_ms if latency_ms > 0 else float("inf")


def bootstrap_speedup(
    baseline: np.ndarray,
    candidate: np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> SpeedupEstimate:
    """Speedup = median(baseline) / median(candidate), with a paired percentile-bootstrap CI.

    ``baseline[i]`` and ``candidate[i]`` come from the same interleaved round, so the bootstrap resamples
    round indices (not each side independently): drift that hit both sides of a round stays paired,
    which is what makes the interval narrow and honest at the same time.
    """
    base, cand = _paired(baseline, candidate, confidence)
    estimate = float(np.median(base) / np.median(cand))
    medians = _resampled_medians(np.random.default_rng(seed), resamples, base, cand)
    return _estimate(estimate, medians[0] / medians[1], confidence, base.size)


def bootstrap_round_ratio(
    baseline: np.ndarray,
    candidate: np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> SpeedupEstimate:
    """Median over rounds of baseline[i] / candidate[i], with a percentile-bootstrap CI over rounds.

    On a busy machine latencies turn bimodal (runs that did or did not collide with other work) and the
    ratio of medians jumps with the mix; a slowdown that hits both runs of a round cancels in that
    round's ratio, so this estimate stays tight where the ratio of medians cannot.
    """
    base, cand = _paired(baseline, candidate, confidence)
    ratios = base / cand
    (medians,) = _resampled_medians(np.random.default_rng(seed), resamples, ratios)
    return _estimate(float(np.median(ratios)), medians, confidence, base.size)


def _paired(baseline: np.ndarray, candidate: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    base = np.asarray(baseline, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if base.shape != cand.shape or base.ndim != 1 or base.size == 0:
        raise ValueError("paired samples must be two non-empty 1-D arrays of equal length")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must lie strictly between 0 and 1")
    return base, cand


def _estimate(value: float, resampled: np.ndarray, confidence: float, rounds: int) -> SpeedupEstimate:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [alpha, 1.0 - alpha])
    return SpeedupEstimate(speedup=value, ci_low=float(low), ci_high=float(high), rounds=rounds)


def _resampled_medians(rng: np.random.Generator, resamples: int, *series: np.ndarray) -> list[np.ndarray]:
    """Medians of each series over the same bootstrap resamples of round indices, in bounded chunks."""
    n = series[0].size
    per_chunk = max(1, _CHUNK_VALUES // n)
    medians = [np.empty(resamples, dtype=np.float64) for _ in series]
    for start in range(0, resamples, per_chunk):
        stop = min(resamples, start + per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        for out, values in zip(medians, series, strict=True):
            out[start:stop] = np.median(values[idx], axis=1)
    return medians


def ci_half_width_percent(estimate: SpeedupEstimate) -> float:
    """Half the CI's width as a percentage of the speedup: the figure to watch when sizing a run."""
    return 100.0 * (estimate.ci_high - estimate.ci_low) / 2.0 / estimate.speedup
