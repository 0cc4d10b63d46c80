"""``bnfold.benchmark``: honest latency and throughput, baseline vs candidate, per provider/opt level/batch.

How the numbers are made, and why:

- one session per (variant, provider, opt level, batch), created and first-run with both times kept;
- warm-up runs, then interleaved rounds A B, B A, A B, ... so drift (thermal, frequency, noisy
  neighbours) hits both variants alike, and each round gives a *paired* sample;
- every run timed with ``perf_counter_ns`` and every sample kept; the garbage collector is paused
  while measuring;
- speedup = baseline p50 / candidate p50, with a 95% bootstrap CI over resampled rounds.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from time import perf_counter_ns

import numpy as np

from bnfold.bench.machine import collect_environment
from bnfold.bench.plan import Config, Plan, make_plan
from bnfold.bench.report import BenchComparison, BenchReport, BenchResult, SkippedProvider
from bnfold.bench.runners import (
    DEVICE_PROVIDERS,
    HostRunner,
    IoBindingRunner,
    Runner,
    create_bench_session,
    output_shapes_on_cpu,
    prime_provider,
)
from bnfold.bench.statistics import bootstrap_round_ratio, bootstrap_speedup, summarize_ns, throughput_per_s
from bnfold.bench.variants import ModelInput, Variant, Variants, prepare_variants
from bnfold.errors import InputSpecError, RuntimeUnavailableError
from bnfold.report import SCHEMA_VERSION
from bnfold.run.sessions import one_line

__all__ = ["benchmark", "BenchReport", "BenchResult", "BenchComparison", "interleaved_order",
           "DEFAULT_WARMUP", "DEFAULT_ITERATIONS"]

DEFAULT_WARMUP = 10
DEFAULT_ITERATIONS = 100
PROGRESS_TICKS = 1000  # progress units per configuration: progress(step, total) reports a fraction
MIN_ROUNDS = 5  # a duration budget smaller than one round still yields a usable sample

Progress = Callable[[int, int], None]


def interleaved_order(round_index: int, variants: int = 2) -> tuple[int, ...]:
    """Which variant runs first in a round: forward on even rounds, reversed on odd (A B, B A, A B, ...)."""
    forward = tuple(range(variants))
    return forward if round_index % 2 == 0 else forward[::-1]


def benchmark(
    model: ModelInput,
    *,
    compare: ModelInput | None = None,
    providers: Sequence[str] = ("cpu",),
    opt_levels: Sequence[str] = ("disable", "all"),
    batches: Sequence[int] | None = None,
    threads: int | None = None,
    warmup: int = DEFAULT_WARMUP,
    iterations: int | None = None,
    duration: float | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    cuda_graph: bool = False,
    progress: Progress | None = None,
) -> BenchReport:
    """Benchmark *model* against *compare*, or against *model* folded in memory when *compare* is None.

    ``batches`` overrides the inputs' symbolic batch dim (None: the model's own batch, 1 where symbolic).
    ``iterations`` is the number of measured rounds per configuration (default 100); ``duration`` is
    instead a time budget in seconds for all measured rounds, split evenly among configurations.
    Providers that cannot run here are skipped and listed in ``report.skipped``; if nothing could run,
    RuntimeUnavailableError is raised.
    """
    plan = make_plan(providers, opt_levels, batches, threads=threads, warmup=warmup, iterations=iterations,
                     duration=duration, default_iterations=DEFAULT_ITERATIONS, seed=seed,
                     cuda_graph=cuda_graph)
    configs, skipped = plan.runnable_configs()
    if configs:  # only then is the model worth loading (and folding)
        variants = prepare_variants(model, compare)
        results, comparisons, skipped = _run_configs(variants, plan, configs, skipped, input_shapes, progress)
    else:
        results, comparisons = [], []
    if not results:
        reasons = "; ".join(f"{s.provider}: {s.reason}" for s in skipped) or "no configuration requested"
        raise RuntimeUnavailableError(f"nothing could be benchmarked ({reasons})")
    return BenchReport(
        schema_version=SCHEMA_VERSION,
        results=tuple(results),
        comparisons=tuple(comparisons),
        skipped=tuple(skipped),
        settings=plan.settings(),
        environment=collect_environment(gpu_used=any(r.provider in DEVICE_PROVIDERS for r in results)),
    )


def _run_configs(variants: Variants, plan: Plan, configs: list[Config], skipped: list[SkippedProvider],
                 input_shapes, progress: Progress | None
                 ) -> tuple[list[BenchResult], list[BenchComparison], list[SkippedProvider]]:
    """Measure every runnable configuration in turn; a provider that fails to start is skipped from then on."""
    skipped = list(skipped)
    results: list[BenchResult] = []
    comparisons: list[BenchComparison] = []
    feeds: dict[int | None, tuple[dict[str, np.ndarray], int]] = {}
    dead: set[str] = set()
    primed: set[str] = set()
    total = max(1, len(configs)) * PROGRESS_TICKS
    budget_ns = None if plan.duration is None else int(plan.duration * 1e9 / max(1, len(configs)))
    for index, config in enumerate(configs):
        if config.provider in dead:
            continue
        if config.batch not in feeds:
            feeds[config.batch] = _make_feed(variants, config.batch, input_shapes, plan.seed)
        feed, batch = feeds[config.batch]
        config = replace(config, batch=batch)
        tick = _ticker(progress, index * PROGRESS_TICKS, total)
        try:
            if config.provider not in primed:
                prime_provider(config.provider, threads=plan.threads)
                primed.add(config.provider)
            measured = _measure_config(variants, config, feed, plan, budget_ns, tick,
                                       baseline_first=index % 2 == 0)
        except RuntimeUnavailableError as exc:
            dead.add(config.provider)
            skipped.append(SkippedProvider(config.provider, str(exc)))
            continue
        results.extend(measured[0])
        comparisons.append(measured[1])
    if progress is not None:
        progress(total, total)
    return results, comparisons, skipped


def _make_feed(variants: Variants, batch: int | None, input_shapes, seed: int) -> tuple[dict[str, np.ndarray], int]:
    """One input feed per batch size, shared by both variants and every configuration, and its actual batch.

    The actual batch is the leading dim of the first input of rank >= 2: a fixed batch dim (or one set by
    --input-shape) is not overridden, and throughput must be counted with the batch that really ran.
    """
    from bnfold.run.inputs import make_feeds

    feeds, _specs = make_feeds(variants.feed_model, input_shapes=input_shapes, samples=1, seed=seed, batch=batch)
    feed = feeds[0]
    leading = [arr.shape[0] for arr in feed.values() if arr.ndim >= 2]
    actual = int(leading[0]) if leading else (batch or 1)
    if batch is not None and actual != batch:
        raise InputSpecError(f"batch {batch} cannot apply: the first input's batch dim is {actual} "
                             "(fixed by the model or by --input-shape)")
    return feed, actual


def _ticker(progress: Progress | None, offset: int, total: int) -> Callable[[float], None]:
    """Turn a configuration's done-fraction into progress(step, total) calls, only when the step moves."""
    if progress is None:
        return lambda _fraction: None
    last = [-1]

    def tick(fraction: float) -> None:
        step = offset + min(PROGRESS_TICKS, int(fraction * PROGRESS_TICKS))
        if step != last[0]:
            last[0] = step
            progress(step, total)

    return tick


@dataclass
class _Opened:
    runner: Runner
    create_ns: int
    first_run_ns: int


def _open(variant: Variant, config: Config, feed: dict[str, np.ndarray], plan: Plan) -> _Opened:
    """Create the session (timed), bind inputs, and make the first run (timed apart from the rest)."""
    start = perf_counter_ns()
    session = _create_session(variant.payload, config, plan)
    create_ns = perf_counter_ns() - start
    expected = {i.name for i in session.get_inputs()}
    if expected != set(feed):
        raise InputSpecError(f"{variant.label} takes inputs {sorted(expected)}, not {sorted(feed)}: "
                             "models compared must take the same inputs")
    runner = _make_runner(session, variant.payload, config, feed)
    try:
        first_ns = runner.run()[0]
    except Exception as exc:  # onnxruntime's own error types; one line for the user
        raise InputSpecError(f"{variant.label} cannot run on the input: {one_line(exc)}") from None
    return _Opened(runner, create_ns, first_ns)


def _create_session(payload: bytes | str, config: Config, plan: Plan):
    return create_bench_session(payload, provider=config.provider, opt_level=config.opt_level,
                                threads=plan.threads, cuda_graph=config.cuda_graph)


def _make_runner(session, payload: bytes | str, config: Config, feed: dict[str, np.ndarray]) -> Runner:
    if config.provider not in DEVICE_PROVIDERS:
        return HostRunner(session, feed)
    shapes = None
    if config.cuda_graph:  # a captured graph replays into fixed output buffers, allocated up front
        shapes = output_shapes_on_cpu(payload, feed)
    return IoBindingRunner(session, feed, device="cuda", output_shapes=shapes)


def _measure_config(variants: Variants, config: Config, feed: dict[str, np.ndarray], plan: Plan,
                    budget_ns: int | None, tick: Callable[[float], None],
                    baseline_first: bool) -> tuple[list[BenchResult], BenchComparison]:
    """Open both sessions (alternating which goes first between configurations), warm up, measure."""
    sides = (variants.baseline, variants.candidate)
    order = (0, 1) if baseline_first else (1, 0)
    opened_by_side = {i: _open(sides[i], config, feed, plan) for i in order}
    opened = [opened_by_side[i] for i in range(len(sides))]
    runners = [o.runner for o in opened]
    _rounds(runners, plan.warmup, None, lambda _f: None)
    end_to_end, device = _rounds(runners, plan.iterations, budget_ns, tick)
    results = [_result(v, config, o, end_to_end[:, i], None if device is None else device[:, i])
               for i, (v, o) in enumerate(zip(sides, opened, strict=True))]
    return results, _comparison(sides, config, end_to_end, device, plan.seed)


def _rounds(runners: list[Runner], count: int | None, budget_ns: int | None,
            tick: Callable[[float], None]) -> tuple[np.ndarray, np.ndarray | None]:
    """Run interleaved rounds: *count* of them, or as many as fit in *budget_ns* (at least MIN_ROUNDS)."""
    end_to_end: list[list[int]] = []
    device: list[list[int | None]] = []
    orders = (interleaved_order(0, len(runners)), interleaved_order(1, len(runners)))
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = perf_counter_ns()
        while True:
            done = len(end_to_end)
            elapsed = perf_counter_ns() - start
            if count is not None and done >= count:
                break
            if budget_ns is not None and elapsed >= budget_ns and done >= MIN_ROUNDS:
                break
            row_e2e = [0] * len(runners)
            row_dev: list[int | None] = [None] * len(runners)
            for v in orders[done % 2]:
                row_e2e[v], row_dev[v] = runners[v].run()
            end_to_end.append(row_e2e)
            device.append(row_dev)
            tick((done + 1) / count if count is not None else elapsed / budget_ns)  # type: ignore[operator]
    finally:
        if gc_was_enabled:
            gc.enable()
    e2e = np.asarray(end_to_end, dtype=np.int64).reshape(-1, len(runners))
    has_device = bool(device) and device[0][0] is not None
    return e2e, (np.asarray(device, dtype=np.int64) if has_device else None)


def _result(variant: Variant, config: Config, opened: _Opened, e2e: np.ndarray,
            device: np.ndarray | None) -> BenchResult:
    assert config.batch is not None  # _run_configs resolved it from the feed
    s = summarize_ns(e2e)
    extra = {}
    if device is not None:
        d = summarize_ns(device)
        extra = dict(device_p50_ms=d.p50_ms, device_p90_ms=d.p90_ms, device_p99_ms=d.p99_ms,
                     device_mean_ms=d.mean_ms, device_min_ms=d.min_ms,
                     device_throughput_per_s=throughput_per_s(config.batch, d.p50_ms))
    return BenchResult(
        model=variant.label, provider=config.provider, opt_level=config.opt_level, batch=config.batch,
        p50_ms=s.p50_ms, p90_ms=s.p90_ms, p99_ms=s.p99_ms, mean_ms=s.mean_ms, std_ms=s.std_ms, min_ms=s.min_ms,
        throughput_per_s=throughput_per_s(config.batch, s.p50_ms),
        session_create_ms=opened.create_ns / 1e6, first_run_ms=opened.first_run_ns / 1e6,
        iterations=s.count, file_size_bytes=variant.file_size_bytes, cuda_graph=config.cuda_graph,
        samples_ms=tuple((e2e / 1e6).tolist()), **extra,
    )


def _comparison(sides: tuple[Variant, Variant], config: Config, e2e: np.ndarray, device: np.ndarray | None,
                seed: int) -> BenchComparison:
    assert config.batch is not None  # _run_configs resolved it from the feed
    main = bootstrap_speedup(e2e[:, 0], e2e[:, 1], seed=seed)
    per_round = bootstrap_round_ratio(e2e[:, 0], e2e[:, 1], seed=seed)
    extra = {}
    if device is not None:
        dev = bootstrap_speedup(device[:, 0], device[:, 1], seed=seed)
        extra = dict(device_speedup=dev.speedup, device_ci_low=dev.ci_low, device_ci_high=dev.ci_high)
    return BenchComparison(
        baseline=sides[0].label, candidate=sides[1].label, provider=config.provider, opt_level=config.opt_level,
        batch=config.batch, speedup=main.speedup, ci_low=main.ci_low, ci_high=main.ci_high, rounds=main.rounds,
        round_ratio=per_round.speedup, round_ratio_ci_low=per_round.ci_low, round_ratio_ci_high=per_round.ci_high,
        **extra,
    )
