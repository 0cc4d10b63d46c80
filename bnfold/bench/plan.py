"""What a benchmark will run: validated settings and the (provider, opt level, batch) configurations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bnfold.bench.report import BenchSettings, SkippedProvider
from bnfold.errors import UsageError

PROVIDER_NAMES = ("cpu", "cuda", "tensorrt")
OPT_LEVEL_NAMES = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class Config:
    """One measured configuration; both variants get a session each under it."""

    provider: str
    opt_level: str
    batch: int | None  # None: the model's own batch (1 where it is symbolic), resolved from the feed
    cuda_graph: bool = False


@dataclass(frozen=True)
class Plan:
    """Validated settings. Exactly one of ``iterations`` / ``duration`` is set."""

    providers: tuple[str, ...]
    opt_levels: tuple[str, ...]
    batches: tuple[int | None, ...]
    threads: int | None
    warmup: int
    iterations: int | None
    duration: float | None
    seed: int
    cuda_graph: bool

    def configs(self) -> list[Config]:
        """Every configuration, provider-major, so a provider that fails is skipped in one place."""
        return [Config(p, o, b, cuda_graph=self.cuda_graph and p == "cuda")
                for p in self.providers for o in self.opt_levels for b in self.batches]

    def runnable_configs(self) -> tuple[list[Config], list[SkippedProvider]]:
        """Configurations whose provider this onnxruntime build has; the others with a reason each."""
        from bnfold.run.sessions import PROVIDERS, available_providers

        here = set(available_providers())
        skipped = [SkippedProvider(p, f"onnxruntime here has no {PROVIDERS[p][0]}"
                                      f"{' (install onnxruntime-gpu)' if p != 'cpu' else ''}")
                   for p in self.providers if p not in here]
        return [c for c in self.configs() if c.provider in here], skipped

    def settings(self) -> BenchSettings:
        return BenchSettings(providers=self.providers, opt_levels=self.opt_levels, batches=self.batches,
                             threads=self.threads, warmup=self.warmup, iterations=self.iterations,
                             duration_s=self.duration, seed=self.seed, cuda_graph=self.cuda_graph)


def make_plan(providers: Sequence[str], opt_levels: Sequence[str], batches: Sequence[int] | None, *,
              threads: int | None,
              warmup: int, iterations: int | None, duration: float | None, default_iterations: int, seed: int,
              cuda_graph: bool) -> Plan:
    """Check the settings once, up front, with messages that name the bad value."""
    if iterations is not None and duration is not None:
        raise UsageError("give either iterations or duration, not both")
    if iterations is not None and iterations < 1:
        raise UsageError(f"iterations must be >= 1, got {iterations}")
    if duration is not None and not duration > 0:
        raise UsageError(f"duration must be > 0 seconds, got {duration}")
    if warmup < 0:
        raise UsageError(f"warmup must be >= 0, got {warmup}")
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    batch_values = (None,) if batches is None else _unique(batches, "batch size")
    if any(b is not None and (int(b) != b or b < 1) for b in batch_values):
        raise UsageError(f"batch sizes must be integers >= 1, got {list(batch_values)}")
    return Plan(
        providers=_checked(providers, PROVIDER_NAMES, "provider"),
        opt_levels=_checked(opt_levels, OPT_LEVEL_NAMES, "optimization level"),
        batches=tuple(None if b is None else int(b) for b in batch_values),
        threads=threads, warmup=warmup,
        iterations=default_iterations if iterations is None and duration is None else iterations,
        duration=duration, seed=seed, cuda_graph=cuda_graph,
    )


def _unique(values: Sequence, what: str) -> tuple:
    unique = tuple(dict.fromkeys(values))
    if not unique:
        raise UsageError(f"give at least one {what}")
    return unique


def _checked(values: Sequence[str], allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    unique = _unique(values, what)
    unknown = [v for v in unique if v not in allowed]
    if unknown:
        raise UsageError(f"unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    return unique
