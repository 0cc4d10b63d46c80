"""Original vs folded on the CPU: a real exported model from the shared corpus and a ResNet from ``models``.

Run from the repository root:  ``.venv/bin/python benchmarks/bench_cpu.py [--duration 30] [--json-dir DIR]``

For each model, ``bnfold.benchmark`` runs ``--duration`` seconds of interleaved rounds (split between
onnxruntime's optimizations off and on) and this script prints bnfold's table plus the 95% CI half-width as
a percentage of each speedup (ratio of medians, and median of per-round ratios): the precision the run
bought (the aim is within +-3% in 30 s).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for the `models` package and an uninstalled bnfold

import bnfold  # noqa: E402
from bnfold.bench.render import render_report  # noqa: E402
from bnfold.bench.statistics import SpeedupEstimate, ci_half_width_percent  # noqa: E402

CORPUS_MODEL = REPO.parent / "shared" / "corpus" / "exp__monai_efficientnetb0_2d__ts.onnx"


def _targets(resnet: str) -> list[tuple[str, object]]:
    """(name, model) pairs; a missing corpus model or models package is reported and skipped."""
    targets: list[tuple[str, object]] = []
    if CORPUS_MODEL.is_file():
        targets.append(("efficientnet-b0 (MONAI export)", str(CORPUS_MODEL)))
    else:
        print(f"skipping the corpus model: {CORPUS_MODEL} not found", file=sys.stderr)
    try:
        import models
    except ImportError as exc:
        print(f"skipping {resnet}: the models package is not importable ({exc})", file=sys.stderr)
    else:
        targets.append((f"{resnet} (models.build, large)", models.build(resnet, large=True)))
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of measured rounds per model")
    parser.add_argument("--resnet", default="resnet18", choices=("resnet18", "resnet50"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json-dir", type=Path, default=None, help="write one JSON report per model here")
    args = parser.parse_args(argv)
    targets = _targets(args.resnet)
    for name, model in targets:
        start = time.perf_counter()
        report = bnfold.benchmark(model, duration=args.duration, threads=args.threads)
        wall = time.perf_counter() - start
        print(f"=== {name}: {wall:.1f} s wall ===")
        print(render_report(report))
        for c in report.comparisons:
            of_medians = SpeedupEstimate(c.speedup, c.ci_low, c.ci_high, c.rounds)
            per_round = SpeedupEstimate(c.round_ratio, c.round_ratio_ci_low, c.round_ratio_ci_high, c.rounds)
            print(f"opt {c.opt_level:8s} speedup {c.speedup:.3f}x, CI half-width "
                  f"{ci_half_width_percent(of_medians):.2f}% | per-round ratio {c.round_ratio:.3f}x, CI half-width "
                  f"{ci_half_width_percent(per_round):.2f}% ({c.rounds} rounds)")
        print()
        if args.json_dir is not None:
            args.json_dir.mkdir(parents=True, exist_ok=True)
            slug = name.split(" ")[0]
            (args.json_dir / f"bench_cpu_{slug}.json").write_text(report.to_json() + "\n", encoding="utf-8")
    return 0 if targets else 1


if __name__ == "__main__":
    sys.exit(main())
