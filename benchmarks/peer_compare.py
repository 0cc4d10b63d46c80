"""bnfold against peer tools on correctness: does each tool fold, and is what it writes still the same model?

    .venv/bin/python benchmarks/peer_compare.py [--no-models] [--no-corpus] [--samples 2] [--seed 0]

Why: the product brief says peers miss Gemm/MatMul/BN-before-Conv folds, write inf into fp16 weights, collide
names, bake overridable initializers and verify weakly. This script measures each claim on a tiny targeted
model (``_peer_cases.py``), and gives BN before/after and the error on the sample models of ``models/`` and on
``../shared/corpus`` where present. It reports what it finds, whichever tool that favours.

Every tool's output is run against the original in onnxruntime with graph optimizations disabled, on seeded
standard-normal inputs (``_peer_check.py``; bnfold's own verification is not used to judge bnfold). bnfold
also appears a second time with its verification on, which may revert folds; its status is shown in brackets.
Prints a markdown report and writes it to benchmarks/results/peer_compare.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from pathlib import Path

import _measure as m
import onnx
from _peer_cases import BN, Case, all_cases
from _peer_check import Measure, Reference, measure, problems, reference
from _peer_tools import TOOLS, Outcome, Transform, apply, bnfold_verified, one_line

DEFAULT_CORPUS = m.ROOT.parent / "shared" / "corpus"
SAMPLE_MODELS = ("resnet18", "mobilenetv2", "densenet_block", "unet2d", "unet3d", "classifier_bn1d", "resnet18_fp16")
VERIFIED = "bnfold (verified)"
WEAK_OUTPUT = 1e-3  # a model whose outputs stay below this on random input says little about its folds
PACKAGES = ("bnfold", "onnx", "onnxruntime", "numpy", "onnxoptimizer", "onnxsim", "onnxslim", "onnxscript", "onnx-ir")


def _outcomes(model: onnx.ModelProto, transforms: dict[str, Transform | str]) -> dict[str, Outcome]:
    """Every tool's result on *model*, and bnfold once more with its own verification."""
    found = {tool.key: apply(tool, transforms, model) for tool in TOOLS}
    found[VERIFIED] = bnfold_verified(model)
    return found


def _judge(original: onnx.ModelProto, outcome: Outcome, ref: Reference, counted: tuple[str, ...],
           ) -> tuple[Outcome, Measure | None]:
    """Measure a result; a measurement that fails on some odd result becomes that cell's text, not an abort."""
    if outcome.model is None:
        return outcome, None
    try:
        return outcome, measure(original, outcome.model, ref, counted)
    except Exception as exc:
        return Outcome(None, f"not measured: {one_line(exc)}"), None


def _fold_words(meas: Measure, label: str) -> str:
    if meas.after < meas.before and meas.constant_ops_added:
        return f"{label} removed, weights computed at run time (+{meas.constant_ops_added} constant-only ops)"
    if meas.after == 0 and meas.before > 0:
        return "folded, exact"
    if meas.after == meas.before:
        return f"left {meas.after} {label}"
    return f"left {meas.after} of {meas.before} {label}"


def _case_cell(outcome: Outcome, meas: Measure | None, case: Case) -> str:
    if meas is None:
        return outcome.failure or "?"
    wrong = problems(meas, case.tolerance)
    cell = "; ".join(wrong) if wrong else _fold_words(meas, "BN" if case.counted == (BN,) else "Mul/Add")
    if wrong and meas.constant_ops_added:
        cell += f" (+{meas.constant_ops_added} constant-only ops)"
    return f"{cell} [{outcome.note}]" if outcome.note else cell


def _detail_row(case: str, tool: str, outcome: Outcome, meas: Measure | None) -> list[object]:
    if meas is None:
        return [case, tool, outcome.failure, "", "", "", "", "", "", ""]
    kept = f"{'yes' if meas.inputs_kept else 'NO'} / {'yes' if meas.outputs_kept else 'NO'}"
    facts = [case, tool, f"{meas.before} -> {meas.after}", kept]
    if meas.errors is None:
        return [*facts, f"does not run: {meas.run_error}", "", "", meas.new_nonfinite_weights,
                meas.constant_ops_added, ""]
    override = ("removed" if meas.override_removed else
                "-" if meas.override_error is None else f"{meas.override_error:.1e}")
    return [*facts, f"{meas.errors.max_abs:.1e}", ", ".join(f"{r:.1e}" for r in meas.errors.rel) or "-",
            "yes" if meas.errors.new_nonfinite else "no", meas.new_nonfinite_weights, meas.constant_ops_added,
            override]


def run_cases(cases: Iterable[Case], samples: int, seed: int, transforms: dict[str, Transform | str],
              ) -> tuple[list[list[object]], list[list[object]]]:
    """One verdict row per case, and one detail row per (case, tool)."""
    verdicts, details = [], []
    for case in cases:
        m.log(f"case {case.name}")
        ref = reference(case.model, samples, seed, case.override)
        row: list[object] = [case.name]
        for key, found in _outcomes(case.model, transforms).items():
            outcome, meas = _judge(case.model, found, ref, case.counted)
            row.append(_case_cell(outcome, meas, case))
            details.append(_detail_row(case.name, key, outcome, meas))
        verdicts.append(row)
    return verdicts, details


def _model_cell(outcome: Outcome, meas: Measure | None, tolerance: float) -> str:
    if meas is None:
        return outcome.failure or "?"
    cell = f"{meas.before}->{meas.after}, err {meas.error:.1e}"
    rel = max(meas.errors.rel, default=0.0) if meas.errors else 0.0
    cell += f" (rel {rel:.1e})" if rel > 10 * meas.error else ""
    cell += f" (+{meas.constant_ops_added} constant-only ops)" if meas.constant_ops_added else ""
    wrong = problems(meas, tolerance)
    cell += "; " + "; ".join(wrong) if wrong else ""
    return f"{cell} [{outcome.note}]" if outcome.note else cell


def _tolerance(model: onnx.ModelProto) -> float:
    """fp16 models get fp16's tolerance (1e-2 of the magnitude), everything else fp32's (1e-4)."""
    half = any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in model.graph.input)
    return 1e-2 if half else 1e-4


def run_models(named: Iterable[tuple[str, onnx.ModelProto]], samples: int, seed: int,
               transforms: dict[str, Transform | str]) -> list[list[object]]:
    rows = []
    for name, model in named:
        m.log(f"model {name}")
        try:
            ref = reference(model, samples, seed, {})
        except Exception as exc:  # a model onnxruntime cannot run with our guessed shapes: say so, go on
            rows.append([name, f"original does not run: {exc}"[:120]] + [""] * len(TOOLS))
            continue
        magnitude = max(float(abs(out).max(initial=0.0)) for sample in ref.outputs for out in sample)
        weak = f" (weak check: max output {magnitude:.1e} on random input)" if magnitude < WEAK_OUTPUT else ""
        row: list[object] = [name + weak]
        for found in _outcomes(model, transforms).values():
            outcome, meas = _judge(model, found, ref, (BN,))
            row.append(_model_cell(outcome, meas, _tolerance(model)))
        rows.append(row)
    return rows


def sample_models() -> Iterable[tuple[str, onnx.ModelProto]]:
    import models

    for name in SAMPLE_MODELS:
        if name in models.MODEL_NAMES:
            yield f"models/{name}", models.build(name, large=False, seed=0)


def corpus_models(folder: Path) -> Iterable[tuple[str, onnx.ModelProto]]:
    for path in sorted(folder.glob("*.onnx")):
        try:
            model = onnx.load(path)
        except Exception as exc:  # one unreadable file must not cost the rest of the report
            m.log(f"corpus/{path.name} skipped: cannot load ({exc})")
            continue
        yield f"corpus/{path.stem}", model


LEGEND = """\
Cells (several problems are joined with `;`):

- **folded, exact**: no BN (Mul/Add for paddle_affine) left, outputs equal within the tolerance.
- **left N BN**: the tool left N BatchNormalization in place; outputs still equal.
- **BN removed, weights computed at run time (+N constant-only ops)**: not a fold: the BN is gone, but the
  result computes the folded weights at every run with N new nodes whose inputs are all constants
  (Cast/Add/Sqrt/Div/Mul...), unless a later pass or the runtime's own constant folding removes them.
  Outputs still equal. "(+N constant-only ops)" after a problem: the same fact.
- **WRONG (err X)**: max|diff| / max(1, max|original output|) above the tolerance (1e-4 fp32, 1e-2 fp16;
  every targeted case has outputs of magnitude > 1, so there it is the error relative to the magnitude);
  **WRONG (inf/NaN in outputs)**: the result's outputs hold inf/NaN where the original's are finite.
- **WRONG: ignores overridden feed**: with `bn.scale` fed as 2x its initializer, the result's output differs
  from the original's (the parameter was baked in while its input was kept).
- **baked: overridable inputs removed**: the tool folded BN parameters that the original declares as
  overridable graph inputs and dropped those inputs: feeding them is now rejected (default-value outputs are
  still right).
- **inf in weights**: a float initializer, Constant, or output of a constant-only node of the result holds
  inf/NaN that the original did not. Constant-only nodes are evaluated with onnx's reference evaluator, in
  their declared dtype: onnxruntime's CPU kernels compute many fp16 ops in fp32, which can hide an fp16
  overflow in a run-time weight computation that an fp16 device or a later constant-folding pass would hit.
- **N tensor names defined twice**: the result defines a name twice (a new tensor took an existing name).
- **outputs renamed** / **inputs renamed**: graph output / real input names differ (then compared by position).
- **does not run: ...**: onnxruntime rejects the result (first line of its message).
- **crashed**: the tool raised. `[status]` after a bnfold (verified) cell is bnfold's own verification verdict."""


def _cases_legend(cases: Iterable[Case]) -> str:
    return "\n".join(f"- **{case.name}**: {case.what}" for case in cases)


def _tools_legend() -> str:
    lines = [f"- **{tool.key}**: `{tool.label}`" for tool in TOOLS]
    lines.append(f"- **{VERIFIED}**: `bnfold.optimize(model)` (verification on, failing folds reverted)")
    return "\n".join(lines)


def report(cases: list[Case], verdicts: list[list[object]], details: list[list[object]],
           model_rows: list[list[object]], samples: int, seconds: float) -> str:
    columns = [tool.key for tool in TOOLS] + [VERIFIED]
    parts = [
        "# bnfold vs peer tools: correctness", "", m.versions_line(PACKAGES), "",
        f"Each result and the original run in onnxruntime (ORT_DISABLE_ALL) on {samples} seeded standard-normal "
        f"samples. Total time {seconds:.0f} s.", "", "## Targeted cases", "",
        m.markdown_table(["case", *columns], verdicts), "", LEGEND, "", "Cases:", "", _cases_legend(cases), "",
        "Tools:", "", _tools_legend(), "",
    ]
    if model_rows:
        parts += ["## Sample and corpus models", "",
                  "Cells: BatchNormalization before->after; err: max|diff| / max(1, max|original output|) over "
                  "outputs and samples (the error relative to the output's magnitude, absolute for outputs below 1);"
                  " (rel X): the purely relative figure where it differs (an output that is ~0 on random input); "
                  "(+N constant-only ops): nodes computed from constants alone that the original did not have "
                  "(onnxoptimizer's run-time weight computation; the fp16->fp32 Casts onnxruntime inserts for "
                  "CPU kernels); then any problem (tolerance 1e-4, fp16 1e-2).",
                  "", m.markdown_table(["model", *columns], model_rows), ""]
    parts += ["## Details of the targeted cases", "",
              "kept: real input names / output names unchanged; rel err: max|diff| / max|original| per output (max "
              "over samples); override: error with the overridable BN scale fed doubled.", "",
              m.markdown_table(["case", "tool", "counted ops", "kept in/out", "max abs err", "rel err",
                                "new inf/NaN out", "inf/NaN weight tensors",
                                "constant-only ops added", "override"], details), ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-models", action="store_true", help="skip the sample models of models/")
    parser.add_argument("--no-corpus", action="store_true", help="skip ../shared/corpus")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="folder of .onnx models")
    parser.add_argument("--samples", type=int, default=2, help="random input samples per model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    transforms: dict[str, Transform | str] = {}
    cases = all_cases(args.seed)
    verdicts, details = run_cases(cases, args.samples, args.seed, transforms)
    named: list[Iterable[tuple[str, onnx.ModelProto]]] = []
    if not args.no_models:
        named.append(sample_models())
    if not args.no_corpus:
        if args.corpus.is_dir():
            named.append(corpus_models(args.corpus))
        else:
            m.log(f"corpus folder {args.corpus} not found: corpus models skipped")
    model_rows = [row for group in named for row in run_models(group, args.samples, args.seed, transforms)]
    text = report(cases, verdicts, details, model_rows, args.samples, time.perf_counter() - started)
    print(text)
    path = m.write_result("peer_compare.md", text + "\n")
    m.log(f"written to {path}")


if __name__ == "__main__":
    main()
