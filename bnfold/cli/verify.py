"""``bnfold verify REFERENCE CANDIDATE``: run both in onnxruntime on the same inputs and compare.

Exit codes: 0 the candidate matches; 1 it does not (or nothing was comparable: 0 elements, no finite value);
2 usage; 3 a model or its inputs are unusable (NaN/inf inputs included);
4 the JSON report cannot be written. The JSON report is written before the verdict, failures included.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from bnfold.bench.plan import PROVIDER_NAMES
from bnfold.cli.options import input_options
from bnfold.cli.report_output import echo_human, emit_json, json_option, prepare_json
from bnfold.cli.verbosity import verbosity_options
from bnfold.errors import VerificationFailed

MAX_TENSOR_ROWS = 12  # intermediate tensors listed one by one; beyond, only the failing ones up to this many


EXAMPLES = """\b
Examples:
  bnfold verify model.onnx model.folded.onnx
  bnfold verify model.onnx model.folded.onnx --per-layer --input-shape x:1,3,224,224
  bnfold verify a.onnx b.onnx --json - | jq .passed
"""


@click.command("verify", short_help="Check that two models compute the same outputs.", epilog=EXAMPLES)
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--atol", type=click.FloatRange(min=0), default=None,
              help="Output tolerance relative to max(1, magnitude of the element's channel); overrides the one "
                   "from the compute dtype, depth and measured noise [float32: 1e-4].")
@click.option("--rtol", type=click.FloatRange(min=0), default=None,
              help="Tolerance relative to each reference element [float32: 1e-5].")
@click.option("--per-layer", is_flag=True,
              help="Also compare every intermediate float tensor both models share, each node recomputed on the "
                   "reference's inputs: FAIL where a divergence starts, drift where error only accumulates.")
@click.option("--check-tensor", "check_tensors", multiple=True, metavar="NAME",
              help="Also compare this intermediate tensor; it counts for the verdict (repeatable).")
@click.option("--provider", type=click.Choice(PROVIDER_NAMES), default="cpu", show_default=True)
@json_option("Write the JSON report here (also when verification fails).")
@click.option("--truth", type=click.Choice(["float64"]), default=None,
              help="Also measure both models against the reference evaluated in float64 (onnx's reference "
                   "evaluator: small models).")
@verbosity_options
@input_options
def verify_command(reference: Path, candidate: Path, atol: float | None, rtol: float | None, per_layer: bool,
                   check_tensors: tuple[str, ...], provider: str, json_path: Path | None, truth: str | None,
                   quiet: bool, verbose: bool, input_shapes, inputs, samples: int, seed: int, value_range) -> None:
    """Check that CANDIDATE computes what REFERENCE computes (onnxruntime, graph optimizations disabled).

    Exit codes: 0 match; 1 mismatch; 2 usage; 3 model or inputs unusable; 4 report cannot be written;
    130 interrupted.
    """
    from bnfold.cli.input_shapes import resolve_shapes
    from bnfold.verification.verifier import verify

    prepare_json(json_path, reads=[reference, candidate], inputs=inputs)  # before the (possibly long) run
    input_shapes = resolve_shapes(reference, input_shapes)
    report = verify(str(reference), str(candidate), inputs=inputs, input_shapes=dict(input_shapes) or None,
                    atol=atol, rtol=rtol, per_layer=per_layer, samples=samples, seed=seed, value_range=value_range,
                    provider=provider, check_tensors=check_tensors)
    truth_rows = _truth(reference, candidate, truth, inputs, input_shapes, samples, seed, value_range)
    if json_path is not None:
        document = report.to_dict() | ({"truth": [row.to_dict() for row in truth_rows]} if truth else {})
        emit_json(json_path, json.dumps(document, indent=2, allow_nan=False))
    if not quiet:
        echo_human(render(report, reference=str(reference), candidate=str(candidate), verbose=verbose), json_path)
    for row in truth_rows if not quiet else ():
        echo_human(f"vs float64 truth: output {row.output!r}: reference error {row.reference_error:.3g}, "
                   f"candidate error {row.candidate_error:.3g} (max |error| / max |truth|)", json_path)
    if not report.passed:
        raise VerificationFailed(f"verification failed: {report.summary()}", report)


def _truth(reference: Path, candidate: Path, truth: str | None, inputs, input_shapes, samples, seed, value_range):
    """The float64 comparison on the very feeds verify used (same options, same seed)."""
    if truth is None:
        return ()
    from bnfold.io.model_file import load_model
    from bnfold.run.inputs import make_feeds
    from bnfold.verification.truth import compare_to_truth

    model = load_model(reference)
    feeds, _ = make_feeds(model, inputs=inputs, input_shapes=dict(input_shapes) or None, samples=samples,
                          seed=seed, value_range=value_range)
    return compare_to_truth(model, str(candidate), feeds)


def render(report, *, reference: str, candidate: str, verbose: bool = False) -> str:
    """The plain-text report: how the models were run, one row per compared tensor, the verdict."""
    lines = [f"bnfold verify {reference} (reference) vs {candidate} (candidate)"]
    lines += [f"  input {_input_line(spec)}" for spec in report.inputs]
    lines.append(f"  onnxruntime {report.provider}, graph optimizations {report.graph_optimizations}; "
                 f"{report.samples} sample(s), seed {report.seed}; atol {_tol(report.atol)} "
                 f"(x max(1, channel magnitude)), rtol {_tol(report.rtol)}")
    lines += _table("output", report.outputs)
    if report.tensors:
        lines += _table("tensor", report.tensors) if verbose else _tensor_rows(report)
    if report.first_divergence:
        d = report.first_divergence
        where = f" from node {d['node']!r} ({d['op_type']})" if d.get("node") else ""
        lines.append(f"First divergence: tensor {d['tensor']!r}{where}")
    lines += [f"Note: {note}" for note in report.notes]
    lines.append(("PASS: " if report.passed else "FAIL: ") + report.summary())
    return "\n".join(lines)


def _input_line(spec) -> str:
    from bnfold.run.inputs import format_declared

    text = f"{spec.name} {spec.dtype} {_dims(spec.shape)}"
    if spec.chosen:
        guesses = ", ".join(f"dim {i}={v}" for i, v in spec.chosen.items())
        text += f" (guessed {guesses}; declared {format_declared(spec.declared or ())}; set with --input-shape)"
    return text


def _dims(shape) -> str:
    return "x".join("?" if d is None else str(d) for d in shape) or "scalar"


def _tol(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:g}" for k, v in value.items())
    return f"{value:g}"


def _tensor_rows(report) -> list[str]:
    tensors = report.tensors
    failing = [t for t in tensors if t.verdict == "fail"] + [t for t in tensors if not t.passed and t.verdict != "fail"]
    if len(tensors) <= MAX_TENSOR_ROWS:
        return _table("tensor", tensors)
    shown = failing[:MAX_TENSOR_ROWS]
    lines = [f"{len(tensors)} intermediate tensors compared, {len(failing)} beyond tolerance"
             + (f" ({sum(t.verdict == 'fail' for t in tensors)} diverging where computed)"
                if any(t.verdict for t in tensors) else "")
             + (f"; the first {len(shown)}:" if shown else "")]
    return lines + (_table("tensor", shown) if shown else [])


def _table(kind: str, comparisons) -> list[str]:
    if not comparisons:
        return []
    width = min(48, max(len(kind), *(len(c.name) for c in comparisons)))
    head = (f"{kind:<{width}}  {'dtype':<8} {'shape':<14} {'max abs':>9} {'max rel':>9} {'cosine':>12} "
            f"{'mismatched':>15} {'top-1':>6}  result")
    rows = [head]
    for c in comparisons:
        name = c.name if len(c.name) <= width else "..." + c.name[-(width - 3):]
        if c.note:
            rows.append(f"{name:<{width}}  {c.dtype:<8} {_dims(c.shape):<14} {c.note}  FAIL")
            continue
        top1 = "-" if c.top1_agreement is None else f"{c.top1_agreement:.0%}"
        rows.append(f"{name:<{width}}  {c.dtype:<8} {_dims(c.shape):<14} {_num(c.max_abs_error):>9} "
                    f"{_num(c.max_rel_error):>9} {c.cosine:>12.9f} {f'{c.mismatched}/{c.compared}':>15} "
                    f"{top1:>6}  {_result(c)}")
    return rows


def _result(c) -> str:
    """ok / FAIL, or with --per-layer the verdict: drift is error carried from upstream, not a failure."""
    if c.compared == 0 and c.note is None:
        return "empty"  # nothing compared: no evidence either way (a verdict with nothing at all fails)
    if c.verdict is None:
        return "ok" if c.passed else "FAIL"
    return {"pass": "ok", "drift": "drift", "fail": "FAIL"}[c.verdict]


def _num(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.2e}"
