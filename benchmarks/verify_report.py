"""How well verification tells correct folds from faulty ones: every corpus model and every deep models/ builder.

    .venv/bin/python benchmarks/verify_report.py [--corpus DIR] [--only SUBSTR,...] [--no-mutants] [--large]
        [--fp16io] [--out FILE]

``--fp16io`` converts each corpus model as users do, with onnxconverter-common's
``convert_float_to_float16(keep_io_types=True)`` (install it for that; rows read "(fp16 keep-io)", and
``--only keep-io`` keeps just those).

For each model (``../shared/corpus/*.onnx``, ``../shared/corpus/exporters/*.onnx``, and ``models.DEEP_NAMES``:
ResNet-101, DenseNet-201, 3-D U-Net, each fp32 and fp16-compute/fp32-I/O):

- **folds**: folds ``bnfold.optimize(..., verify=False)`` applies; **reverted**: folds the verified ``optimize``
  reverts (every one of them correct: the fold is exact) and its final status;
- **time**: verified ``optimize`` wall time vs ``verify=False`` (same in-memory model, median of a few runs);
  and ``verify(per_layer=True)`` vs plain ``verify`` on the correct fold; both verdicts on the correct fold
  (a per-layer FAIL there would be a false alarm, and names the tensor);
- **mutants** (``tests/verification/mutants.py``: one channel x1.01, one bias +5 % of the spread, two biases
  swapped, the fold rounded through float16) at the first, middle and deepest folded conv. ``opt``: caught by
  verified ``optimize`` with the mutant injected into its fold (exactly that fold reverted, no other);
  ``ver``: ``bnfold.verify(original, mutant, per_layer=True)`` failed; ``named``: its first divergence is the
  mutated conv's output. Cells read caught/tried; the float16 mutant is not tried on float16 weights.

Only the public API is used (``optimize`` -> report.applied/.reverted/.verification.status, ``verify`` ->
.passed/.first_divergence), so the script keeps working while verification's internals change. Writes the
markdown to stdout and ``benchmarks/results/verify_report.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import onnx  # noqa: E402

import bnfold  # noqa: E402
import models  # noqa: E402
from bnfold.errors import BnfoldError, VerificationFailed  # noqa: E402
from tests.verification import mutants as M  # noqa: E402

DEFAULT_CORPUS = Path(os.environ.get("BNFOLD_CORPUS") or REPO.parent / "shared" / "corpus")
RESULTS = REPO / "benchmarks" / "results" / "verify_report.md"


@dataclass
class Row:
    name: str
    bn: int = 0
    folds: int = 0
    reverted: int | str = "-"
    status: str = "-"
    t_plain: float = float("nan")
    t_verified: float = float("nan")
    t_verify: float = float("nan")
    t_per_layer: float = float("nan")
    verify_correct: str = "-"  # plain verify on the correct (unmutated) fold
    per_layer_correct: str = "-"  # verify --per-layer on it: PASS, or FAIL with the tensor it named
    # depth -> [opt caught, ver caught, named, tried]
    mutants: dict[str, list[int]] = field(default_factory=lambda: {d: [0, 0, 0, 0] for d in M.DEPTHS})
    missed: list[str] = field(default_factory=list)


def _median_time(fn, rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def _verified(model: onnx.ModelProto):
    """(report, status) of a verified optimize; a VerificationFailed still carries its report."""
    try:
        result = bnfold.optimize(model)
        return result.report, result.report.verification.status
    except VerificationFailed as exc:
        return exc.report, "failed (raised)"
    except BnfoldError as exc:
        return None, f"error: {type(exc).__name__}"


def _mutant_row(row: Row, model: onnx.ModelProto, folded, applied) -> None:
    for depth in M.DEPTHS:
        for kind in M.KINDS:
            try:
                mutant = M.mutate(folded, applied, kind, depth)
            except M.NotApplicable:
                continue
            cell = row.mutants[depth]
            cell[3] += 1
            expected = {a.node for a in applied if a.target == mutant.node}
            try:
                with M.injected(kind, mutant.node):
                    report, _ = _verified(model)
            except Exception as exc:  # noqa: BLE001 - a crash is a result here, reported as a miss
                report = None
                row.missed.append(f"{kind}@{depth}: optimize raised {type(exc).__name__}: {exc}")
            reverted = {r.node for r in report.reverted} if report is not None else set()
            opt = reverted == expected
            try:
                check = bnfold.verify(model, mutant.model, per_layer=True)
                ver = not check.passed
                first = getattr(check, "first_divergence", None) or {}
                named = ver and first.get("tensor") == mutant.output
            except Exception:  # noqa: BLE001
                ver = named = False
            cell[0] += opt
            cell[1] += ver
            cell[2] += named
            if not (opt and ver and named):
                row.missed.append(f"{kind}@{depth} ({mutant.node}): optimize {_reverts(reverted, expected)}; "
                                  f"verify {'FAIL' if ver else 'PASS'}, first divergence "
                                  f"{'named' if named else 'elsewhere'}")


def _reverts(reverted: set[str], expected: set[str]) -> str:
    if reverted == expected:
        return "reverted exactly that fold"
    hit = "all of" if expected <= reverted else ("part of" if expected & reverted else "none of")
    return f"reverted {len(reverted)} folds, {hit} the faulty conv's {len(expected)}"


def measure(name: str, model: onnx.ModelProto, *, mutants: bool, rounds: int) -> Row:
    row = Row(name, bn=sum(n.op_type == "BatchNormalization" for n in model.graph.node))
    row.t_plain, plain = _median_time(lambda: bnfold.optimize(model, verify=False), rounds)
    row.folds = len(plain.report.applied)
    row.t_verified, (report, row.status) = _median_time(lambda: _verified(model), rounds)
    if report is not None:
        row.reverted = len(report.reverted)
    try:
        row.t_verify, check = _median_time(lambda: bnfold.verify(model, plain.model), rounds)
        row.verify_correct = "PASS" if check.passed else "FAIL"
        row.t_per_layer, layered = _median_time(lambda: bnfold.verify(model, plain.model, per_layer=True), rounds)
        named = (layered.first_divergence or {}).get("tensor")
        row.per_layer_correct = "PASS" if layered.passed else f"FAIL at {named}"
    except BnfoldError:
        pass
    if mutants and plain.report.applied:
        _mutant_row(row, model, plain.model, plain.report.applied)
    return row


def _sources(corpus: Path, large: bool, fp16io: bool = False):
    convert = _fp16io_converter() if fp16io else None
    for path in (sorted(corpus.glob("*.onnx")) + sorted((corpus / "exporters").glob("*.onnx"))
                 if corpus.is_dir() else []):
        if convert is None:
            yield str(path.relative_to(corpus)), lambda p=path: onnx.load(p)
        elif "fp16" not in path.name:  # already float16
            yield f"{path.relative_to(corpus)} (fp16 keep-io)", lambda p=path: convert(onnx.load(p))
    for name in models.DEEP_NAMES:
        yield f"models:{name}" + (" (large)" if large else ""), lambda n=name: models.build(n, large=large)


def _fp16io_converter():
    """onnxconverter-common's float16 conversion with float32 I/O, as users run it (not a dependency: install
    it to use ``--fp16io``)."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise SystemExit("--fp16io needs onnxconverter-common (pip install onnxconverter-common)") from None
    return lambda model: float16.convert_float_to_float16(model, keep_io_types=True)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0 and a == a and b == b else "-"


def render(rows: list[Row], mutants: bool) -> str:
    head = ("| model | BN | folds | reverted | status | no-verify s | verified s | ratio | verify (correct fold) "
            "| per-layer (correct fold) | verify s | per-layer s | ratio |")
    sep = "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    if mutants:
        head += " first opt/ver/named | middle | deepest |"
        sep += "---|---|---|"
    lines = [head, sep]
    totals = {d: [0, 0, 0, 0] for d in M.DEPTHS}
    for r in rows:
        line = (f"| {r.name} | {r.bn} | {r.folds} | {r.reverted} | {r.status} | {r.t_plain:.2f} | "
                f"{r.t_verified:.2f} | {_ratio(r.t_verified, r.t_plain)} | {r.verify_correct} | "
                f"{r.per_layer_correct} | {r.t_verify:.2f} | {r.t_per_layer:.2f} | "
                f"{_ratio(r.t_per_layer, r.t_verify)} |")
        if mutants:
            for d in M.DEPTHS:
                o, v, n, t = r.mutants[d]
                totals[d] = [a + b for a, b in zip(totals[d], r.mutants[d], strict=True)]
                line += f" {o}/{v}/{n} of {t} |" if t else " - |"
        lines.append(line)
    if mutants:
        lines += ["", "Mutants caught, all models (optimize exactly-that-fold / verify --per-layer failed / "
                  "first divergence named, of tried):", ""]
        lines += [f"- {d}: {o}/{t} by optimize, {v}/{t} by verify, {n}/{t} named" for d, (o, v, n, t)
                  in totals.items()]
        missed = [f"- {r.name}: {m}" for r in rows for m in r.missed]
        lines += ["", f"Missed ({len(missed)}):", "", *missed] if missed else []
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--only", help="comma-separated substrings of model names to keep")
    parser.add_argument("--no-mutants", action="store_true")
    parser.add_argument("--large", action="store_true", help="deep builders at their published widths")
    parser.add_argument("--rounds", type=int, default=3, help="timing runs per figure (median)")
    parser.add_argument("--fp16io", action="store_true",
                        help="each corpus model converted by onnxconverter-common (float16, keep_io_types=True)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"markdown written here (default {RESULTS})")
    args = parser.parse_args(argv)
    keep = [s for s in (args.only or "").split(",") if s]
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, load in _sources(args.corpus, args.large, args.fp16io):
        if keep and not any(k in name for k in keep):
            continue
        rows.append(measure(name, load(), mutants=not args.no_mutants, rounds=args.rounds))
        print(f"measured {name}", file=sys.stderr, flush=True)
        args.out.write_text(render(rows, not args.no_mutants))  # so far: a long run leaves what it measured
    text = render(rows, not args.no_mutants)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
