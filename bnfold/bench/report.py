"""The benchmark's report types: frozen, JSON-ready, with keys that stay stable across releases."""

from __future__ import annotations

from dataclasses import dataclass, field

from bnfold.bench.machine import BenchEnvironment
from bnfold.report import ReportMixin

OPT_LEVEL_NOTE = (
    "Each model runs with onnxruntime's graph optimizations off ('disable') and on ('all'). "
    "'disable' shows the graph as written, as a runtime that does not fuse BatchNormalization would run it; "
    "'all' lets onnxruntime fuse at load time, so the speedup there is what offline folding buys beyond "
    "onnxruntime's own fusion - on the CPU often mainly a shorter session creation, not faster runs."
)


@dataclass(frozen=True)
class BenchResult(ReportMixin):
    """Latency of one model variant under one (provider, opt level, batch) configuration.

    ``p*_ms`` and ``throughput_per_s`` are end to end (numpy in, numpy out). For device providers run
    through IO binding, ``device_*_ms`` is the run alone with inputs and outputs already on the device.
    Throughput is batch / median latency.
    """

    model: str
    provider: str
    opt_level: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    throughput_per_s: float
    session_create_ms: float
    first_run_ms: float
    iterations: int
    file_size_bytes: int
    cuda_graph: bool = False
    device_p50_ms: float | None = None
    device_p90_ms: float | None = None
    device_p99_ms: float | None = None
    device_mean_ms: float | None = None
    device_min_ms: float | None = None
    device_throughput_per_s: float | None = None
    samples_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True)
class BenchComparison(ReportMixin):
    """Speedup of candidate over baseline (baseline p50 / candidate p50) with a 95% paired-bootstrap CI.

    ``round_ratio`` is the median over rounds of baseline / candidate latency, with its own CI: the two
    runs of a round share whatever else the machine was doing, so it stays tight on a busy machine
    where the ratio of medians swings with the mix of slow and fast runs.
    """

    baseline: str
    candidate: str
    provider: str
    opt_level: str
    batch: int
    speedup: float
    ci_low: float
    ci_high: float
    rounds: int
    round_ratio: float
    round_ratio_ci_low: float
    round_ratio_ci_high: float
    device_speedup: float | None = None
    device_ci_low: float | None = None
    device_ci_high: float | None = None


@dataclass(frozen=True)
class SkippedProvider(ReportMixin):
    """A requested provider (or configuration) that could not run here, and why."""

    provider: str
    reason: str


@dataclass(frozen=True)
class BenchSettings(ReportMixin):
    """What was asked for, so a JSON file says how its numbers were made."""

    providers: tuple[str, ...]
    opt_levels: tuple[str, ...]
    batches: tuple[int | None, ...]  # None: the model's own batch
    threads: int | None
    warmup: int
    iterations: int | None
    duration_s: float | None
    seed: int
    cuda_graph: bool
    # Idle intra-op threads sleep instead of spin-waiting, so the two alternating sessions don't steal
    # cores from each other (see bench_runners.create_bench_session).
    thread_spinning: bool = False


@dataclass(frozen=True)
class BenchReport(ReportMixin):
    """Everything ``bnfold bench`` measured: one result per variant and configuration, paired comparisons."""

    REPORT_KIND = "bench"  # the report contract (bnfold/report.py)

    schema_version: int
    results: tuple[BenchResult, ...]
    comparisons: tuple[BenchComparison, ...]
    skipped: tuple[SkippedProvider, ...]
    settings: BenchSettings
    environment: BenchEnvironment
    note: str = OPT_LEVEL_NOTE

    def result_for(self, model: str, provider: str, opt_level: str, batch: int) -> BenchResult:
        """The result of one variant in one configuration (KeyError when it did not run)."""
        for result in self.results:
            if (result.model, result.provider, result.opt_level, result.batch) == (model, provider, opt_level, batch):
                return result
        raise KeyError((model, provider, opt_level, batch))
