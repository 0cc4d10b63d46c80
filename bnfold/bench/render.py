"""A BenchReport as readable text: one block per configuration, a speedup line, and the opt-level note."""

from __future__ import annotations

import textwrap
from pathlib import PurePath

from bnfold.bench.report import BenchComparison, BenchReport, BenchResult

_COLUMNS = ("model", "p50 ms", "p90 ms", "p99 ms", "mean±std ms", "min ms", "items/s", "create ms", "1st run ms")
_DEVICE_COLUMNS = ("device p50 ms", "device items/s")


def render_report(report: BenchReport, *, width: int = 100) -> str:
    """The whole report: environment line, tables, and the plain-words note on optimization levels."""
    env = report.environment
    settings = report.settings
    rounds = (f"{settings.iterations} rounds" if settings.iterations is not None
              else f"{settings.duration_s:g} s of rounds")
    lines = [
        f"onnxruntime {env.onnxruntime_version} on {env.cpu_model} ({env.logical_cores} logical cores)"
        + (f", GPU {env.gpu_name}" if env.gpu_name else ""),
        f"{settings.warmup} warm-up + {rounds} per configuration, interleaved A B / B A; "
        f"threads: {settings.threads or 'onnxruntime default'}",
        "",
    ]
    for comparison in report.comparisons:
        lines.extend(render_configuration(report, comparison))
        lines.append("")
    lines.extend(textwrap.wrap(report.note, width=width))
    return "\n".join(lines)


def render_configuration(report: BenchReport, comparison: BenchComparison) -> list[str]:
    """Heading, one row per variant, and the speedup with its confidence interval."""
    key = (comparison.provider, comparison.opt_level, comparison.batch)
    results = [report.result_for(name, *key) for name in (comparison.baseline, comparison.candidate)]
    graph = " + CUDA graph" if results[0].cuda_graph else ""
    heading = (f"{comparison.provider}{graph} · onnxruntime optimizations {comparison.opt_level}"
               f" · batch {comparison.batch}")
    device = results[0].device_p50_ms is not None
    header = _COLUMNS + (_DEVICE_COLUMNS if device else ())
    rows = [_row(r, device) for r in results]
    table = _align([header, *rows])
    label = f"{display_name(comparison.candidate)} vs {display_name(comparison.baseline)}"
    lines = [heading, *table, f"speedup {label}: {_speedup(comparison.speedup, comparison.ci_low, comparison.ci_high)}"
             f" ({comparison.rounds} paired rounds, end to end)",
             f"  median of per-round ratios: "
             f"{_speedup(comparison.round_ratio, comparison.round_ratio_ci_low, comparison.round_ratio_ci_high)}"
             " (steadier when the machine is busy)"]
    if comparison.device_speedup is not None:
        lines.append(f"speedup on the device alone: "
                     f"{_speedup(comparison.device_speedup, comparison.device_ci_low, comparison.device_ci_high)}")
    if comparison.provider == "tensorrt":
        lines.append("TensorRT builds its engine during session creation (or the first run, for dynamic shapes).")
    return lines


def display_name(label: str) -> str:
    """'original'/'folded' as they are; a path by its file name."""
    return PurePath(label).name if ("/" in label or "\\" in label) else label


def _row(result: BenchResult, device: bool) -> tuple[str, ...]:
    cells: tuple[str, ...] = (
        display_name(result.model),
        _ms(result.p50_ms), _ms(result.p90_ms), _ms(result.p99_ms),
        f"{_ms(result.mean_ms)}±{_ms(result.std_ms)}", _ms(result.min_ms),
        _rate(result.throughput_per_s), _ms(result.session_create_ms), _ms(result.first_run_ms),
    )
    if device:
        cells += (_ms(result.device_p50_ms), _rate(result.device_throughput_per_s))
    return cells


def _speedup(value: float, low: float | None, high: float | None) -> str:
    return f"{value:.3f}x (95% CI {low:.3f}-{high:.3f})"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 1000 else f"{value:.0f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _align(rows: list[tuple[str, ...]]) -> list[str]:
    """Left-align the first column (names), right-align the numbers."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    return lines
