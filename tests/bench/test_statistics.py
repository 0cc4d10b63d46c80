"""Latency summaries and the paired bootstrap, on synthetic samples whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from bnfold.bench import statistics as bench_stats
from bnfold.bench.statistics import (
    bootstrap_round_ratio,
    bootstrap_speedup,
    ci_half_width_percent,
    summarize_ns,
    throughput_per_s,
)


def _lognormal_ns(rng: np.random.Generator, n: int, median_ms: float, sigma: float = 0.1) -> np.ndarray:
    return (median_ms * 1e6 * rng.lognormal(0.0, sigma, n)).astype(np.int64)


def test_summary_orders_percentiles_and_converts_to_ms():
    samples = _lognormal_ns(np.random.default_rng(1), 500, median_ms=4.0)
    s = summarize_ns(samples)
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms
    assert s.count == 500
    assert s.p50_ms == pytest.approx(np.median(samples) / 1e6, rel=1e-12)
    assert s.mean_ms == pytest.approx(samples.mean() / 1e6, rel=1e-12)
    assert s.std_ms == pytest.approx(samples.std(ddof=1) / 1e6, rel=1e-12)
    assert 3.5 < s.p50_ms < 4.5


def test_summary_of_one_sample_has_zero_spread_and_empty_is_refused():
    s = summarize_ns(np.array([2_000_000]))
    assert (s.p50_ms, s.p99_ms, s.std_ms) == (2.0, 2.0, 0.0)
    with pytest.raises(ValueError):
        summarize_ns(np.array([], dtype=np.int64))


def test_throughput_is_batch_over_latency():
    assert throughput_per_s(8, 4.0) == pytest.approx(2000.0)
    assert throughput_per_s(1, 0.0) == float("inf")


def test_bootstrap_recovers_a_known_ratio_and_its_ci_contains_it():
    rng = np.random.default_rng(7)
    candidate = _lognormal_ns(rng, 400, median_ms=2.0)
    baseline = (candidate * 1.25 * rng.lognormal(0.0, 0.02, 400)).astype(np.int64)  # paired, 25% slower
    est = bootstrap_speedup(baseline, candidate, seed=3)
    assert est.rounds == 400
    assert est.ci_low <= est.speedup <= est.ci_high
    assert est.ci_low <= 1.25 <= est.ci_high
    assert est.speedup == pytest.approx(1.25, rel=0.02)
    assert ci_half_width_percent(est) < 2.0


def test_pairing_cancels_drift_shared_by_both_sides():
    """Slow drift that hits both sides of each round must not widen the CI: that is why rounds are paired."""
    rng = np.random.default_rng(11)
    drift = np.linspace(1.0, 2.0, 300)  # latency doubles over the run, e.g. thermal throttling
    candidate = (1e6 * drift * rng.lognormal(0, 0.01, 300)).astype(np.int64)
    baseline = (1.1e6 * drift * rng.lognormal(0, 0.01, 300)).astype(np.int64)
    paired = bootstrap_speedup(baseline, candidate, seed=0)
    unpaired = bootstrap_speedup(baseline, rng.permutation(candidate), seed=0)
    assert paired.ci_low <= 1.1 <= paired.ci_high
    assert (paired.ci_high - paired.ci_low) < 0.5 * (unpaired.ci_high - unpaired.ci_low)


def test_round_ratio_stays_tight_when_a_busy_machine_makes_latencies_bimodal():
    """A random ~half of the rounds collide with other work (both runs 2-4x slower, not equally): the ratio
    of medians swings with the mix, the median of per-round ratios does not."""
    rng = np.random.default_rng(3)
    busy = rng.random(200) < 0.5

    def slowdown() -> np.ndarray:
        return np.where(busy, rng.uniform(2.0, 4.0, 200), 1.0)

    candidate = 1e6 * slowdown() * rng.lognormal(0, 0.02, 200)
    baseline = 1.25e6 * slowdown() * rng.lognormal(0, 0.02, 200)
    per_round = bootstrap_round_ratio(baseline, candidate, seed=1)
    of_medians = bootstrap_speedup(baseline, candidate, seed=1)
    assert per_round.ci_low <= 1.25 <= per_round.ci_high
    assert per_round.ci_low <= per_round.speedup <= per_round.ci_high
    assert per_round.speedup == pytest.approx(1.25, rel=0.01)
    assert ci_half_width_percent(per_round) < 1.0
    assert ci_half_width_percent(of_medians) > 3 * ci_half_width_percent(per_round)


def test_bootstrap_is_seeded_and_identical_samples_give_exactly_one():
    rng = np.random.default_rng(5)
    a = _lognormal_ns(rng, 100, 1.0)
    b = _lognormal_ns(rng, 100, 1.0)
    assert bootstrap_speedup(a, b, seed=9) == bootstrap_speedup(a, b, seed=9)
    same = bootstrap_speedup(a, a, seed=0)
    assert (same.speedup, same.ci_low, same.ci_high) == (1.0, 1.0, 1.0)


def test_bootstrap_in_chunks_matches_one_chunk(monkeypatch):
    rng = np.random.default_rng(2)
    a, b = _lognormal_ns(rng, 50, 3.0), _lognormal_ns(rng, 50, 2.0)
    whole = bootstrap_speedup(a, b, resamples=300, seed=4)
    monkeypatch.setattr(bench_stats, "_CHUNK_VALUES", 50 * 7)  # 7 resamples per chunk
    chunked = bootstrap_speedup(a, b, resamples=300, seed=4)
    assert chunked.ci_low == pytest.approx(whole.ci_low, rel=1e-12)
    assert chunked.ci_high == pytest.approx(whole.ci_high, rel=1e-12)


@pytest.mark.parametrize(
    ("baseline", "candidate", "confidence"),
    [([1, 2], [1], 0.95), ([], [], 0.95), ([1, 2], [1, 2], 1.0)],
)
def test_bootstrap_refuses_bad_input(baseline, candidate, confidence):
    with pytest.raises(ValueError):
        bootstrap_speedup(np.array(baseline), np.array(candidate), confidence=confidence)
    with pytest.raises(ValueError):
        bootstrap_round_ratio(np.array(baseline), np.array(candidate), confidence=confidence)
