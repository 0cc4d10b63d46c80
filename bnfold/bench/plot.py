"""Optional plot of a BenchReport: latency ECDFs of both variants, one panel per configuration.

matplotlib is an optional extra (``pip install 'bnfold[plot]'``). Only ``matplotlib.figure`` is used, never
pyplot, so no GUI backend is touched and the caller's matplotlib state is left alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bnfold.bench.render import display_name
from bnfold.bench.report import BenchComparison, BenchReport
from bnfold.errors import OutputWriteError, UsageError

_INSTALL_HINT = "--plot needs matplotlib: pip install 'bnfold[plot]'"


def require_matplotlib() -> None:
    """Fail before a long benchmark rather than after it when plotting cannot work."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise UsageError(_INSTALL_HINT) from None


def plot_report(report: BenchReport, path: str | Path) -> Path:
    """Write a PNG (or any format matplotlib infers from the suffix) and return its path."""
    require_matplotlib()
    from matplotlib.figure import Figure

    comparisons = report.comparisons
    columns = min(2, max(1, len(comparisons)))
    rows = max(1, math.ceil(len(comparisons) / columns))
    figure = Figure(figsize=(6.4 * columns, 4.2 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, comparison in zip(axes[:len(comparisons)], comparisons, strict=True):
        _panel(ax, report, comparison)
    for ax in axes[len(comparisons):]:
        ax.set_visible(False)
    target = Path(path)
    try:
        figure.savefig(target, dpi=110)
    except OSError as exc:
        raise OutputWriteError(f"cannot write the plot to {target}: {exc.strerror or exc}") from None
    return target


def _panel(ax, report: BenchReport, comparison: BenchComparison) -> None:
    """ECDF of end-to-end latencies: the horizontal gap between the curves is the speedup at each quantile."""
    key = (comparison.provider, comparison.opt_level, comparison.batch)
    for name in (comparison.baseline, comparison.candidate):
        samples = np.sort(np.asarray(report.result_for(name, *key).samples_ms))
        if samples.size:
            fraction = np.arange(1, samples.size + 1) / samples.size
            ax.step(samples, fraction, where="post", label=display_name(name))
    ax.set_title(f"{comparison.provider} · opt {comparison.opt_level} · batch {comparison.batch}\n"
                 f"speedup {comparison.speedup:.3f}x (95% CI {comparison.ci_low:.3f}-{comparison.ci_high:.3f})",
                 fontsize=10)
    ax.set_xlabel("latency per run (ms, end to end)")
    ax.set_ylabel("fraction of runs ≤ latency")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
