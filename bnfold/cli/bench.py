"""``bnfold bench``: latency and throughput of a model against its folded self (or another model)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bnfold.bench.plan import OPT_LEVEL_NAMES, PROVIDER_NAMES
from bnfold.cli.options import input_shape_option
from bnfold.io.atomic import require_folder, write_text_atomic


def _names(allowed: tuple[str, ...]) -> Callable[[click.Context, click.Parameter, str], tuple[str, ...]]:
    def callback(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(v.strip().lower() for v in value.split(",") if v.strip()))
        unknown = [n for n in names if n not in allowed]
        if not names or unknown:
            raise click.BadParameter(f"expected a comma-separated list of {', '.join(allowed)}, got {value!r}")
        return names

    return callback


def _batches(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sizes = tuple(dict.fromkeys(int(v) for v in value.split(",") if v.strip()))
    except ValueError:
        sizes = ()
    if not sizes or any(b < 1 for b in sizes):
        raise click.BadParameter(f"expected comma-separated batch sizes >= 1 such as 1,8, got {value!r}")
    return sizes


class _ProgressBar:
    """A click progress bar on stderr, opened on the first progress call (the total is known only then)."""

    def __init__(self) -> None:
        self._bar: Any = None  # click's ProgressBar, which click does not export

    def __call__(self, step: int, total: int) -> None:
        if self._bar is None:
            self._bar = click.progressbar(length=total, label="benchmarking", file=sys.stderr, width=30)
            self._bar.__enter__()
        self._bar.update(step - self._bar.pos)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


@click.command("bench")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--compare", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Benchmark MODEL against this model instead of against MODEL folded in memory.")
@click.option("--provider", "providers", default="cpu", show_default=True, callback=_names(PROVIDER_NAMES),
              metavar="LIST", help="Execution providers, comma-separated: cpu, cuda, tensorrt.")
@click.option("--opt-level", "opt_levels", default="disable,all", show_default=True,
              callback=_names(OPT_LEVEL_NAMES), metavar="LIST",
              help="onnxruntime graph optimization levels, comma-separated: disable, basic, extended, all.")
@click.option("--batch", "batches", default=None, callback=_batches, metavar="LIST",
              help="Batch sizes, comma-separated, for inputs with a symbolic batch dim "
                   "[default: the model's own batch, 1 where symbolic].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True,
              help="Unmeasured rounds per configuration before timing.")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Measured rounds per configuration (default 100 unless --duration).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Time budget in seconds for all measured rounds, split among configurations.")
@input_shape_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the random input and bootstrap.")
@click.option("--cuda-graph", is_flag=True, help="Capture CUDA runs into a CUDA graph (provider cuda only).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, metavar="OUT",
              help="Write the full report as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, metavar="OUT.png",
              help="Plot latency distributions (needs matplotlib: pip install 'bnfold[plot]').")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def bench_command(model: str, compare: str | None, providers: tuple[str, ...], opt_levels: tuple[str, ...],
                  batches: tuple[int, ...] | None, threads: int | None, warmup: int, iterations: int | None,
                  duration: float | None, input_shapes: dict[str, tuple[int, ...]], seed: int, cuda_graph: bool,
                  json_path: str | None, plot_path: str | None, quiet: bool) -> None:
    """Time MODEL against MODEL folded in memory (or against --compare OTHER).

    Both models run in interleaved rounds on the same input, with onnxruntime's optimizations off and on
    by default; the speedup is baseline p50 / candidate p50 with a 95% bootstrap confidence interval.
    A provider that cannot run here is skipped with one line on stderr; exit 3 if nothing ran.
    """
    from bnfold.bench.benchmark import benchmark
    from bnfold.bench.render import render_report

    for out in (json_path, plot_path):  # fail now, not after minutes of measuring
        if out is not None:
            require_folder(Path(out))
    if plot_path is not None:
        from bnfold.bench.plot import require_matplotlib

        require_matplotlib()
    bar = _ProgressBar() if not quiet and sys.stderr.isatty() else None
    try:
        report = benchmark(model, compare=compare, providers=providers, opt_levels=opt_levels, batches=batches,
                           threads=threads, warmup=warmup, iterations=iterations, duration=duration,
                           input_shapes=input_shapes or None, seed=seed, cuda_graph=cuda_graph, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    for skipped in report.skipped:
        click.echo(f"Skipped {skipped.provider}: {skipped.reason}", err=True)
    click.echo(render_report(report))
    if json_path is not None:
        write_text_atomic(json_path, report.to_json() + "\n")
        click.echo(f"wrote {json_path}", err=True)
    if plot_path is not None:
        from bnfold.bench.plot import plot_report

        plot_report(report, plot_path)
        click.echo(f"wrote {plot_path}", err=True)

