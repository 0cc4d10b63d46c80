"""Peak memory and time of ``bnfold optimize`` on a model over protobuf's 2 GB limit (external data), against
plain onnx load + save with external data. Never run in CI: it writes several GB and takes minutes.

Run from the repository root:  ``.venv/bin/python benchmarks/big_model.py [--workdir DIR] [--no-ort]``

The model, a stack of Conv 3x3 -> BatchNormalization -> Relu layers (1024 channels, 64 layers: ~2.4 GB of
weights), is written layer by layer straight into its data file, so building it never holds more than one
layer. Each measurement runs in a fresh interpreter (peak memory is VmHWM; see ``_measure``). Then the folded
model is loaded back and, unless ``--no-ort``, ``bnfold.verify`` runs original and folded in onnxruntime.
Every file is deleted at the end, also on failure. Writes benchmarks/results/big_model.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _measure as m

MEMORY_VS_LOAD_SAVE = 1.3
DISK_FACTOR = 3.5  # source + one output at a time + a verification candidate in the temp folder, plus headroom
SPATIAL = 4  # input height and width: enough to run every layer, small enough to keep inference short


def _onnx_load_save(src: Path, out: Path) -> dict:
    import onnx

    model = onnx.load(src)  # reads the external data
    onnx.save(model, out, save_as_external_data=True, all_tensors_to_one_file=True,
              location=out.name + ".data", size_threshold=1024)
    return {}


def _bnfold_optimize(src: Path, out: Path, *, verify: bool = False) -> dict:
    from bnfold.cli.optimize_file import OptimizeSettings, optimize_file

    outcome = optimize_file(src, out, OptimizeSettings(verify=verify, samples=1))
    if outcome.exit_code != 0:
        raise RuntimeError(f"bnfold optimize failed ({outcome.exit_code}): {outcome.message}")
    return {"folds": len(outcome.report.applied), "verification": outcome.report.verification.status}


def _bnfold_optimize_verified(src: Path, out: Path) -> dict:
    return _bnfold_optimize(src, out, verify=True)


def _check_folded(src: Path, folded: Path) -> dict:
    """Load the folded model back, data included; count what is left."""
    from bnfold.io import model_file as io

    model = io.load_model(folded)
    return {"batchnorms": sum(n.op_type == "BatchNormalization" for n in model.graph.node),
            "nodes": len(model.graph.node), "external": io.uses_external_data(folded)}


def _verify_folded(src: Path, folded: Path) -> dict:
    """Original and folded in onnxruntime on one random sample (graph optimisations disabled)."""
    import bnfold

    report = bnfold.verify(src, folded, samples=1)
    worst = max(o.error_vs_magnitude for o in report.outputs)
    return {"passed": report.passed, "error_vs_magnitude": worst}


def _importing(modules: tuple[str, ...], runner: m.Runner):
    """A setup that imports *modules* first, so 'RSS after imports' means what it says."""
    def setup() -> m.Runner:
        for module in modules:
            __import__(module)
        return runner
    return setup


VARIANTS = (
    m.Variant("onnx", "onnx.load + onnx.save, external data (baseline)", _importing(("onnx",), _onnx_load_save)),
    m.Variant("bnfold", "bnfold optimize --no-verify (CLI path)",
              _importing(("bnfold.cli.optimize_file", "bnfold.optimizer"), _bnfold_optimize)),
    m.Variant("check", "load the folded model back (bnfold.io.load_model)", _importing(("bnfold.io",), _check_folded)),
    m.Variant("verify", "bnfold.verify(original, folded, samples=1) in onnxruntime",
              _importing(("bnfold.verification",), _verify_folded)),
    m.Variant("verified", "bnfold optimize --samples 1 (with verification; --with-verification)",
              _importing(("bnfold.cli.optimize_file", "bnfold.optimizer"), _bnfold_optimize_verified)),
)


def build_model(path: Path, channels: int, layers: int, seed: int = 0) -> int:
    """Write the model and ``<name>.data`` layer by layer; returns the bytes of weights written."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    graph = onnx.GraphProto(name="big_conv_bn_stack")
    x, written = "input", 0
    with open(path.with_name(path.name + ".data"), "wb") as data:
        for i in range(layers):
            x, nbytes = _add_layer(graph, data, path.name + ".data", written, rng, i, x, channels)
            written += nbytes
    shape = ["N", channels, SPATIAL, SPATIAL]
    graph.input.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, shape))
    graph.output.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, shape))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)  # the proto holds no weight payloads, only references into the data file
    return written


def _add_layer(graph, data, location: str, offset: int, rng, i: int, x: str, channels: int) -> tuple[str, int]:
    """Conv (weight appended to the data file) -> BatchNormalization (inline statistics) -> Relu."""
    import onnx
    from onnx import TensorProto, helper

    from models.params import batch_norm_params, he_normal

    weight = he_normal(rng, (channels, channels, 3, 3), channels * 9)
    tensor = graph.initializer.add(name=f"layer{i}.conv.weight", data_type=TensorProto.FLOAT, dims=weight.shape,
                                   data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(weight.nbytes))):
        tensor.external_data.add(key=key, value=value)
    data.write(weight.astype("<f4", copy=False).tobytes())
    bn = batch_norm_params(rng, channels)
    names = [f"layer{i}.bn.{part}" for part in ("weight", "bias", "running_mean", "running_var")]
    for name, value in zip(names, (bn.scale, bn.bias, bn.mean, bn.var), strict=True):
        graph.initializer.append(onnx.numpy_helper.from_array(value, name))
    scope = f"/layer{i}"
    conv, norm, relu = (f"{scope}/{part}_output_0" for part in ("conv/Conv", "bn/BatchNormalization", "relu/Relu"))
    graph.node.extend([
        helper.make_node("Conv", [x, tensor.name], [conv], name=f"{scope}/conv/Conv", pads=[1] * 4,
                         kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", [conv, *names], [norm], name=f"{scope}/bn/BatchNormalization",
                         epsilon=1e-5),
        helper.make_node("Relu", [norm], [relu], name=f"{scope}/relu/Relu"),
    ])
    return relu, weight.nbytes


def _pair(args: argparse.Namespace, source: Path, folder: Path) -> tuple[dict[str, list[m.Memory]], dict[str, int]]:
    """The baseline and bnfold, each in a fresh process, alternating order over the repeats."""
    script = Path(__file__)
    runs: dict[str, list[m.Memory]] = {"onnx": [], "bnfold": []}
    sizes: dict[str, int] = {}
    for repeat in range(args.repeats):
        for key in ("onnx", "bnfold") if repeat % 2 == 0 else ("bnfold", "onnx"):
            output = folder / f"{key}.onnx"
            m.log(f"{key}: load + save in a fresh process ...")
            runs[key].append(m.measure_in_child(script, key, source, output))
            sizes[key] = _pair_size(output)
            if key == "onnx" or repeat < args.repeats - 1:
                m.remove_outputs(output)  # keep one output on disk at a time
    return runs, sizes


def _pair_size(model: Path) -> int:
    data = model.with_name(model.name + ".data")
    return model.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _measure_all(args: argparse.Namespace, folder: Path) -> dict:
    source = folder / "big.onnx"
    m.log(f"building {args.layers} x Conv({args.channels}) + BN layers in {folder} ...")
    started = time.perf_counter()
    weight_bytes = build_model(source, args.channels, args.layers)
    build_seconds = time.perf_counter() - started
    runs, sizes = _pair(args, source, folder)
    script, folded = Path(__file__), folder / "bnfold.onnx"
    m.log("loading the folded model back ...")
    extra = {"check": m.measure_in_child(script, "check", source, folded, fresh_output=False)}
    if not args.no_ort:
        m.log("verifying original vs folded in onnxruntime ...")
        extra["verify"] = m.measure_in_child(script, "verify", source, folded, fresh_output=False)
    if args.with_verification:
        m.remove_outputs(folded)  # one output on disk at a time
        m.log("bnfold optimize with verification ...")
        extra["verified"] = m.measure_in_child(script, "verified", source, folded)
    return dict(runs=runs, sizes=sizes, extra=extra, weight_bytes=weight_bytes, build_seconds=build_seconds,
                source_size=_pair_size(source), args=args)


def _rows(r: dict) -> list[tuple]:
    runs = r["runs"]
    base_peak = m.median([x.peak for x in runs["onnx"]])
    rows = []
    for variant in VARIANTS:
        found = runs.get(variant.key) or ([r["extra"][variant.key]] if variant.key in r["extra"] else [])
        if not found:
            rows.append((variant.label, "skipped", "", "", "", ""))
            continue
        seconds, peak = m.median([x.seconds for x in found]), m.median([x.peak for x in found])
        notes = {**(found[-1].info or {})}
        if variant.key in r["sizes"]:
            notes["output GiB"] = f"{r['sizes'][variant.key] / 2**30:.2f}"
        ratio = f"{peak / base_peak:.2f}x" if variant.key in runs else "-"
        rows.append((variant.label, f"{seconds:.2f}", m.mib(peak), ratio,
                     m.mib(m.median([x.imports for x in found])),
                     ", ".join(f"{k}: {_fmt(v)}" for k, v in notes.items())))
    return rows


def _fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _render(r: dict) -> str:
    args, runs = r["args"], r["runs"]
    ratio = m.median([x.peak for x in runs["bnfold"]]) / m.median([x.peak for x in runs["onnx"]])
    return "\n".join([
        f"# bnfold on a model over 2 GB: {args.layers} x (Conv 3x3 {args.channels}->{args.channels} -> "
        f"BatchNormalization -> Relu), input N x {args.channels} x {SPATIAL} x {SPATIAL}",
        "",
        m.versions_line(("bnfold", "onnx", "onnxruntime", "numpy", "protobuf")),
        "",
        f"Model: {r['source_size'] / 2**30:.2f} GiB on disk ({r['weight_bytes'] / 2**30:.2f} GiB of weights in "
        f"external data), built in {r['build_seconds']:.0f} s. Every row ran in a fresh interpreter; load+save "
        f"and bnfold {args.repeats} time(s) each, alternating order, medians. Peak RSS is VmHWM, imports included.",
        "",
        m.markdown_table(("step", "time s", "peak RSS MiB", "vs load+save", "RSS after imports MiB", "notes"),
                         _rows(r)),
        "",
        "## Target",
        "",
        m.markdown_table(("target", "measured", "limit", "verdict"), [
            ("bnfold --no-verify peak RSS / onnx load+save (external data)", f"{ratio:.2f}x",
             f"<= {MEMORY_VS_LOAD_SAVE}x", m.verdict(ratio, MEMORY_VS_LOAD_SAVE))]),
    ]) + "\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=1024, help="Conv channels (default 1024)")
    parser.add_argument("--layers", type=int, default=64, help="Conv+BN layers (default 64: ~2.4 GB)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of load+save and of bnfold (default 1)")
    parser.add_argument("--no-ort", action="store_true", help="skip running the models in onnxruntime")
    parser.add_argument("--with-verification", action="store_true",
                        help="also time bnfold optimize with verification (several GB more memory, minutes)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where a temporary folder for the files is made (default: the system temp folder)")
    parser.add_argument("--child", nargs=3, metavar=("KEY", "SOURCE", "OUTPUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        m.child_main(VARIANTS, args.child)
        return 0
    need = DISK_FACTOR * args.layers * args.channels**2 * 9 * 4
    free = m.free_bytes(args.workdir)
    m.log(f"{args.workdir}: {free / 2**30:.1f} GiB free, about {need / 2**30:.1f} GiB needed")
    if free < need:
        raise SystemExit(f"not enough room in {args.workdir}; pass --workdir with at least {need / 2**30:.1f} GiB")
    folder = Path(tempfile.mkdtemp(prefix="bnfold-big-model-", dir=args.workdir))
    try:
        report = _render(_measure_all(args, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        m.log(f"removed {folder}")
    print(report)
    m.log(f"written to {m.write_result('big_model.md', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
