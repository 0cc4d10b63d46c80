"""How long and how much memory ``bnfold optimize`` takes on a ~100 MB ResNet-50, against plain onnx load+save
and the peer tools that also fold BatchNormalization (onnxslim, onnxsim, onnxoptimizer; skipped when absent).

Run from the repository root:  ``.venv/bin/python benchmarks/fold_speed.py [--rounds 5] [--no-peers]``

Times in two settings: one process, every tool once per round, rounds alternating forward/reversed order;
and each tool in fresh interpreters (as a CLI user runs it), which also give the peak memory (VmHWM; see
``_measure``). The bnfold rows run exactly what the CLI runs (``bnfold.cli.optimize_file``). Medians.
Writes benchmarks/results/fold_speed.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _fold_targets as t
import _measure as m


def _onnx_load_save() -> m.Runner:
    import onnx

    return lambda src, out: onnx.save(onnx.load(src), out)


def _bnfold_cli(verify: bool):
    def setup() -> m.Runner:
        from bnfold.cli.optimize_file import OptimizeSettings, optimize_file

        settings = OptimizeSettings(verify=verify)

        def run(src: Path, out: Path) -> None:
            outcome = optimize_file(src, out, settings)
            if outcome.exit_code != 0:
                raise RuntimeError(f"bnfold optimize failed ({outcome.exit_code}): {outcome.message}")
        return run
    return setup


def _bnfold_api() -> m.Runner:
    import bnfold
    from bnfold.io import model_file as io

    def run(src: Path, out: Path) -> None:
        result = bnfold.optimize(src, verify=False)
        io.save_model(result.model, out)
    return run


def _onnxslim() -> m.Runner:
    import onnx
    import onnxslim

    return lambda src, out: onnx.save(onnxslim.slim(str(src)), out)


def _onnxsim() -> m.Runner:
    import onnx
    import onnxsim

    return lambda src, out: onnx.save(onnxsim.simplify(str(src))[0], out)


def _onnxoptimizer() -> m.Runner:
    import onnx
    import onnxoptimizer

    return lambda src, out: onnx.save(onnxoptimizer.optimize(onnx.load(src), ["fuse_bn_into_conv"]), out)


VARIANTS = (
    m.Variant("onnx", "onnx.load + onnx.save (baseline)", _onnx_load_save),
    m.Variant("bnfold", "bnfold optimize --no-verify (CLI path)", _bnfold_cli(verify=False)),
    m.Variant("bnfold_api", "bnfold.optimize(path, verify=False) + io.save_model", _bnfold_api),
    m.Variant("onnxoptimizer", "onnxoptimizer fuse_bn_into_conv + save", _onnxoptimizer, ("onnxoptimizer",)),
    m.Variant("onnxslim", "onnxslim.slim(path) + save", _onnxslim, ("onnxslim",)),
    m.Variant("onnxsim", "onnxsim.simplify(path) + save", _onnxsim, ("onnxsim",)),
    m.Variant("bnfold_verify", "bnfold optimize (with verification, CLI path)", _bnfold_cli(verify=True)),
)
PEERS = ("onnxoptimizer", "onnxslim", "onnxsim")


def _verify_child(per_layer: bool):
    """verify(SOURCE, OUTPUT) in a measuring child: OUTPUT is the candidate (bnfold's fold), not written."""
    def setup() -> m.Runner:
        from bnfold.verification.verifier import verify

        return lambda src, candidate: {"passed": verify(str(src), str(candidate), per_layer=per_layer).passed}
    return setup


VERIFY_CHILDREN = (m.Variant("verify", "verify", _verify_child(False)),
                   m.Variant("verify_per_layer", "verify --per-layer", _verify_child(True)))


def _build_models(folder: Path) -> tuple[Path, Path]:
    """The measured ResNet-50 (large) and the small one the fresh processes warm up on."""
    import onnx

    import models

    paths = folder / "resnet50_large.onnx", folder / "resnet50_small.onnx"
    for path, large in zip(paths, (True, False), strict=True):
        onnx.save(models.build("resnet50", large=large, seed=0), path)
    return paths


def _bn_left(path: Path) -> int:
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return sum(node.op_type == "BatchNormalization" for node in graph.node)


def _ort_inference(source: Path, rounds: int) -> tuple[float, float]:
    """(median session creation, median steady one-sample inference) with graph optimisations disabled,
    made the way verification makes its sessions."""
    import onnx

    import models
    from bnfold.run.sessions import create_session

    feed = models.random_inputs(onnx.load(source, load_external_data=False), batch=1, seed=0)
    creations, runs = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        session = create_session(str(source), opt_level="disable")
        creations.append(time.perf_counter() - started)
        session.run(None, feed)  # the first run allocates; verification pays it too, but once per session
        started = time.perf_counter()
        session.run(None, feed)
        runs.append(time.perf_counter() - started)
        del session
    return m.median(creations), m.median(runs)


def _per_layer_cost(source: Path, candidate: Path, rounds: int) -> tuple[float, float]:
    """(median plain verify, median verify --per-layer) of the ResNet-50 against bnfold's fold of it."""
    from bnfold.verification.verifier import verify

    plain, layered = [], []
    for _ in range(rounds):
        for per_layer, bucket in ((False, plain), (True, layered)):
            started = time.perf_counter()
            verify(str(source), str(candidate), per_layer=per_layer)
            bucket.append(time.perf_counter() - started)
    return m.median(plain), m.median(layered)


def _breakdown(source: Path, folder: Path) -> str:
    columns = []
    for verify in (False, True):
        run = _bnfold_cli(verify)()
        output = folder / "profiled.onnx"
        m.remove_outputs(output)
        stats = m.profile_call(lambda run=run, output=output: run(source, output))
        columns.append([m.cumulative(stats, part) for part in m.BNFOLD_STAGES])
    rows = [(part.label, f"{plain:.3f}", f"{checked:.3f}")
            for part, plain, checked in zip(m.BNFOLD_STAGES, *columns, strict=True)]
    return m.markdown_table(("part (cProfile, cumulative; nested lines are inside the line above)",
                             "--no-verify s", "with verification s"), rows)


def _select(no_peers: bool) -> tuple[list[m.Variant], dict[str, str]]:
    chosen, skipped = [], {}
    for variant in VARIANTS:
        missing = variant.missing()
        if no_peers and variant.key in PEERS:
            skipped[variant.key] = "skipped (--no-peers)"
        elif missing:
            skipped[variant.key] = f"not installed (pip install {missing})"
        else:
            chosen.append(variant)
    return chosen, skipped


def _measure_all(args: argparse.Namespace, folder: Path) -> dict:
    variants, skipped = _select(args.no_peers)
    m.log("building resnet50 (large, and small for warm-ups) ...")
    source, small = _build_models(folder)
    keys = [v.key for v in variants]
    fresh = {} if args.fresh_rounds == 0 else m.in_fresh_processes(
        Path(__file__), keys, source, folder / "fresh.onnx", args.fresh_rounds, warmup=small, progress=m.log)
    runners = {v.key: v.setup() for v in variants}
    m.log("one process: warm-up round ...")
    m.time_interleaved(runners, source, folder, 1)
    times = m.time_interleaved(runners, source, folder, args.rounds, m.log)
    facts = {key: (_bn_left(folder / f"{key}.onnx"), (folder / f"{key}.onnx").stat().st_size) for key in keys}
    m.log("onnxruntime session creation and inference ...")
    ort = _ort_inference(source, args.rounds)
    m.log("verify vs verify --per-layer ...")
    per_layer = _per_layer_cost(source, folder / "bnfold.onnx", args.rounds) if "bnfold" in keys else None
    verify_peaks = {} if per_layer is None or args.fresh_rounds == 0 else {
        v.key: m.measure_in_child(Path(__file__), v.key, source, folder / "bnfold.onnx", fresh_output=False)
        for v in VERIFY_CHILDREN}
    breakdown = "" if args.no_profile else _breakdown(source, folder)
    return dict(skipped=skipped, times=times, fresh=fresh, facts=facts, ort=ort, breakdown=breakdown,
                per_layer=per_layer, verify_peaks=verify_peaks,
                source_size=source.stat().st_size, rounds=args.rounds, fresh_rounds=args.fresh_rounds)


def _rows(r: dict) -> list[tuple]:
    med = t.medians(r)
    rows = []
    for variant in VARIANTS:
        if variant.key in r["skipped"]:
            rows.append((variant.label, r["skipped"][variant.key], *[""] * 8))
            continue
        f, times, (bn_left, size) = med[variant.key], r["times"][variant.key], r["facts"][variant.key]
        rows.append((
            variant.label, f"{f['time']:.3f} ({min(times):.3f}-{max(times):.3f})",
            t.times(t.ratio(med, variant.key, "time")), f"{f['fresh']:.3f}" if "fresh" in f else "-",
            t.times(t.ratio(med, variant.key, "fresh")), m.mib(f["peak"]) if "peak" in f else "-",
            t.times(t.ratio(med, variant.key, "peak")), m.mib(f["imports"]) if "imports" in f else "-",
            bn_left, f"{size / m.MIB:.1f}",
        ))
    return rows


def _render(r: dict) -> str:
    creation, inference = r["ort"]
    parts = [
        "# bnfold fold speed: ResNet-50 (models.build('resnet50', large=True), "
        f"{r['source_size'] / m.MIB:.1f} MiB, 53 BatchNormalization)",
        "",
        m.versions_line(("bnfold", "onnx", "onnxruntime", "numpy", "protobuf", "onnxslim", "onnxsim",
                         "onnxoptimizer")),
        "",
        f"One process: medians (min-max) of {r['rounds']} interleaved rounds after a warm-up round. Fresh "
        f"processes: medians of {r['fresh_rounds']} runs, each tool in its own interpreter (after a warm-up on "
        "the small ResNet-50, so lazy imports are not timed), as a CLI user runs it; peak RSS from these runs "
        "(VmHWM, imports included). The two settings differ because a long-lived process reuses memory that "
        "earlier runs freed, while a fresh one pays a page fault for every new page.",
        "",
        m.markdown_table(("tool", "one process s", "vs load+save", "fresh process s", "vs load+save",
                          "peak RSS MiB", "vs load+save", "RSS after imports MiB", "BN left", "output MiB"),
                         _rows(r)),
        "",
        f"onnxruntime (graph optimisations disabled, batch 1, as verification runs it; one process): session "
        f"creation {creation:.3f} s, one inference {inference:.3f} s (medians of {r['rounds']}).",
        "",
        *_peak_lines(r.get("verify_peaks") or {}),
        "## Targets",
        "",
        m.markdown_table(("target", "measured", "limit", "verdict"), t.targets(r)),
    ]
    if r["breakdown"]:
        parts += ["", "## Where bnfold's time goes (one profiled run of each, one process)", "", r["breakdown"]]
    return "\n".join(parts) + "\n"


def _peak_lines(peaks: dict) -> list[str]:
    """Peak RSS of verify and verify --per-layer (ResNet-50 against bnfold's fold), each in a fresh process."""
    if not peaks:
        return []
    figures = ", ".join(f"{v.label} {m.mib(peaks[v.key].peak)} MiB ({peaks[v.key].seconds:.2f} s)"
                        for v in VERIFY_CHILDREN if v.key in peaks)
    return [f"Peak RSS in a fresh process (VmHWM, imports included; one run each): {figures}.", ""]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds in one process (default 5)")
    parser.add_argument("--fresh-rounds", type=int, default=3,
                        help="runs of each tool in fresh processes, for time and peak memory (default 3; 0: skip)")
    parser.add_argument("--no-peers", action="store_true", help="skip onnxslim/onnxsim/onnxoptimizer")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile breakdown")
    parser.add_argument("--workdir", type=Path, help="folder for the model and outputs (kept); default: a "
                        "temporary folder, removed at the end")
    parser.add_argument("--child", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        m.child_main(VERIFY_CHILDREN if args.child[0].startswith("verify") else VARIANTS, args.child)
        return 0
    if args.rounds < 1 or args.fresh_rounds < 0:
        raise SystemExit("--rounds must be >= 1 and --fresh-rounds >= 0")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="bnfold-fold-speed-"))
    try:
        report = _render(_measure_all(args, folder))
    finally:
        if args.workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(report)
    m.log(f"written to {m.write_result('fold_speed.md', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
