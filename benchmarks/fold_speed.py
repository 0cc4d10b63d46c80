"""How long and how much memory ``bnfold optimize`` takes on a ~100 MB ResNet-50, against plain onnx load+save
and the peer tools that also fold BatchNormalization (onnxslim, onnxsim, onnxoptimizer; skipped when absent).

Run from the repository root:  ``.venv/bin/python benchmarks/fold_speed.py [--rounds 5] [--no-peers]``

Times: one process, every variant once per round, rounds alternating forward/reversed order; medians.
Peak memory: each variant once more in a fresh interpreter (VmHWM; see ``_measure``). The bnfold rows run
exactly what the CLI runs (``bnfold.cli.optimize_file``). Writes benchmarks/results/fold_speed.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _measure as m

TIME_VS_LOAD_SAVE = 1.25
TIME_VS_ONNXSLIM = 0.6
MEMORY_VS_LOAD_SAVE = 1.3
VERIFY_INFERENCES = 3  # optimize with verification <= load+save + 3 one-sample inferences


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
    from bnfold import io

    def run(src: Path, out: Path) -> None:
        result = bnfold.optimize(src, verify=False)
        io.save_model(result.model, out, serialized=result.serialized)
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

BREAKDOWN = (
    m.Part("total (optimize_file)", "bnfold/cli/optimize_file.py", "optimize_file"),
    m.Part("load: bnfold.io.load_model", "bnfold/io.py", "load_model"),
    m.Part("fold + cleanup (optimizer._fold)", "bnfold/optimizer.py", "_fold"),
    m.Part("  rule matching + fold arithmetic (_first_plan)", "bnfold/folding.py", "_first_plan"),
    m.Part("    rounding checks (fold_math.cast_checked)", "bnfold/fold_math.py", "cast_checked"),
    m.Part("  writing folded constants (set_constant_input)", "bnfold/graph.py", "set_constant_input"),
    m.Part("  index rebuilds (GraphIndex.refresh)", "bnfold/graph.py", "refresh"),
    m.Part("  cleanup (clean_graph)", "bnfold/cleanup.py", "clean_graph"),
    m.Part("stats before/after (model_stats)", "bnfold/stats.py", "model_stats"),
    m.Part("verification (verification.verify)", "bnfold/verification.py", "verify"),
    m.Part("  graph parses (runtime.load_graph)", "bnfold/runtime.py", "load_graph"),
    m.Part("  ORT session creation (runtime.create_session)", "bnfold/runtime.py", "create_session"),
    m.Part("    payload for ORT (parse/serialise with extra outputs)", "bnfold/runtime.py", "_payload"),
    m.Part("  ORT inference (InferenceSession.run)", "onnxruntime_inference_collection.py", "run"),
    m.Part("  comparing tensors (compare.compare_arrays)", "bnfold/compare.py", "compare_arrays"),
    m.Part("    of which cosine (compare._cosine)", "bnfold/compare.py", "_cosine"),
    m.Part("source external-data check (io.uses_external_data)", "bnfold/io.py", "uses_external_data"),
    m.Part("save: bnfold.io.save_model", "bnfold/io.py", "save_model"),
    m.Part("all SerializeToString calls", "~", "SerializeToString"),
    m.Part("all ParseFromString calls", "~", "ParseFromString"),
    m.Part("all fsync calls", "~", "fsync"),
)


def _build_model(folder: Path) -> Path:
    import onnx

    import models

    path = folder / "resnet50_large.onnx"
    onnx.save(models.build("resnet50", large=True, seed=0), path)
    return path


def _bn_left(path: Path) -> int:
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return sum(node.op_type == "BatchNormalization" for node in graph.node)


def _ort_inference(source: Path, rounds: int) -> tuple[float, float]:
    """(median session creation, median steady one-sample inference) with graph optimisations disabled,
    made the way verification makes its sessions."""
    import onnx

    import models
    from bnfold.runtime import create_session

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


def _breakdown(source: Path, folder: Path) -> str:
    columns = []
    for verify in (False, True):
        run = _bnfold_cli(verify)()
        output = folder / "profiled.onnx"
        m.remove_outputs(output)
        stats = m.profile_call(lambda run=run, output=output: run(source, output))
        columns.append([m.cumulative(stats, part) for part in BREAKDOWN])
    rows = [(part.label, f"{plain:.3f}", f"{checked:.3f}")
            for part, plain, checked in zip(BREAKDOWN, *columns, strict=True)]
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
    m.log("building resnet50 (large) ...")
    source = _build_model(folder)
    runners = {v.key: v.setup() for v in variants}
    m.log("warm-up round ...")
    m.time_interleaved(runners, source, folder, 1)
    times = m.time_interleaved(runners, source, folder, args.rounds, m.log)
    outputs = {key: folder / f"{key}.onnx" for key in runners}
    facts = {key: (_bn_left(path), path.stat().st_size) for key, path in outputs.items()}
    m.log("onnxruntime session creation and inference ...")
    ort = _ort_inference(source, args.rounds)
    memory = {}
    if not args.no_memory:
        for variant in variants:
            m.log(f"peak memory of {variant.key} in a fresh process ...")
            memory[variant.key] = m.measure_in_child(Path(__file__), variant.key, source, folder / "mem.onnx")
    m.remove_outputs(folder / "mem.onnx")
    breakdown = "" if args.no_profile else _breakdown(source, folder)
    return dict(variants=variants, skipped=skipped, times=times, facts=facts, ort=ort, memory=memory,
                breakdown=breakdown, source_size=source.stat().st_size, rounds=args.rounds)


def _rows(r: dict) -> list[tuple]:
    base_time = m.median(r["times"]["onnx"])
    base_mem = r["memory"].get("onnx")
    rows = []
    for variant in VARIANTS:
        if variant.key in r["skipped"]:
            rows.append((variant.label, r["skipped"][variant.key], "", "", "", "", "", "", ""))
            continue
        times, mem = r["times"][variant.key], r["memory"].get(variant.key)
        bn_left, size = r["facts"][variant.key]
        rows.append((
            variant.label, f"{m.median(times):.3f}", f"{min(times):.3f}-{max(times):.3f}",
            f"{m.median(times) / base_time:.2f}x",
            m.mib(mem.peak) if mem else "-", f"{mem.peak / base_mem.peak:.2f}x" if mem and base_mem else "-",
            m.mib(mem.imports) if mem else "-", bn_left, f"{size / m.MIB:.1f}",
        ))
    return rows


def _targets(r: dict) -> list[tuple]:
    med = {key: m.median(values) for key, values in r["times"].items()}
    mem = r["memory"]
    creation, inference = r["ort"]
    budget = med["onnx"] + VERIFY_INFERENCES * inference
    time_ratio = med["bnfold"] / med["onnx"]
    slim_ratio = med["bnfold"] / med["onnxslim"] if "onnxslim" in med else None
    mem_ratio = mem["bnfold"].peak / mem["onnx"].peak if "bnfold" in mem and "onnx" in mem else None
    verify_ratio = med["bnfold_verify"] / budget
    return [
        ("bnfold --no-verify time / load+save", f"{time_ratio:.2f}x", f"<= {TIME_VS_LOAD_SAVE}x",
         m.verdict(time_ratio, TIME_VS_LOAD_SAVE)),
        ("bnfold --no-verify time / onnxslim", "n/a" if slim_ratio is None else f"{slim_ratio:.2f}x",
         f"<= {TIME_VS_ONNXSLIM}x", m.verdict(slim_ratio, TIME_VS_ONNXSLIM)),
        ("bnfold --no-verify peak RSS / load+save", "n/a" if mem_ratio is None else f"{mem_ratio:.2f}x",
         f"<= {MEMORY_VS_LOAD_SAVE}x", m.verdict(mem_ratio, MEMORY_VS_LOAD_SAVE)),
        (f"bnfold with verification / (load+save + {VERIFY_INFERENCES} x inference)",
         f"{verify_ratio:.2f}x ({med['bnfold_verify']:.2f} s vs {budget:.2f} s)", "<= 1.00x",
         m.verdict(verify_ratio, 1.0)),
    ]


def _render(r: dict) -> str:
    creation, inference = r["ort"]
    parts = [
        "# bnfold fold speed: ResNet-50 (models.build('resnet50', large=True), "
        f"{r['source_size'] / m.MIB:.1f} MiB, 53 BatchNormalization)",
        "",
        m.versions_line(("bnfold", "onnx", "onnxruntime", "numpy", "protobuf", "onnxslim", "onnxsim",
                         "onnxoptimizer")),
        "",
        f"Times: medians of {r['rounds']} interleaved rounds in one process (after a warm-up round). "
        "Peak RSS: one run per tool in a fresh interpreter (VmHWM, imports included).",
        "",
        m.markdown_table(("tool", "time median s", "min-max s", "vs load+save", "peak RSS MiB", "vs load+save",
                          "RSS after imports MiB", "BN left", "output MiB"), _rows(r)),
        "",
        f"onnxruntime (graph optimisations disabled, batch 1, as verification runs it): session creation "
        f"{creation:.3f} s, one inference {inference:.3f} s (medians of {r['rounds']}).",
        "",
        "## Targets",
        "",
        m.markdown_table(("target", "measured", "limit", "verdict"), _targets(r)),
    ]
    if r["breakdown"]:
        parts += ["", "## Where bnfold's time goes (one profiled run of each)", "", r["breakdown"]]
    return "\n".join(parts) + "\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--no-peers", action="store_true", help="skip onnxslim/onnxsim/onnxoptimizer")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak memory runs")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile breakdown")
    parser.add_argument("--workdir", type=Path, help="folder for the model and outputs (kept); default: a "
                        "temporary folder, removed at the end")
    parser.add_argument("--child", nargs=3, metavar=("KEY", "SOURCE", "OUTPUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        m.child_main(VARIANTS, *args.child)
        return 0
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
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
