"""Fold and verify every model of ../shared/corpus; print BN before/after, verify figures, and whether an
injected fault (one output channel of one folded conv scaled by 1.01) is caught by `bnfold verify`: first in
the first folded conv; where the outputs hide that one (a 1 % change can shrink below float rounding on its
way to the outputs), also in the last folded conv, nearest the outputs.

    .venv/bin/python benchmarks/corpus_report.py [CORPUS_DIR]

A script for the closing note and for regressions on real models; not a test (the test tier is
tests/test_corpus.py).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import onnx

import bnfold
from bnfold.fold.graph import GraphIndex, NameAllocator

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def inject_channel_fault(model: onnx.ModelProto, folded: set[str], *, last: bool = False,
                         factor: float = 1.01) -> str:
    """Scale output channel 0 of the first (or last) folded Conv (one whose output is in *folded*)."""
    index = GraphIndex(model.graph, label="main", opset=17, names=NameAllocator(model))
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.output[0] in folded]
    if not convs:
        raise SystemExit("no folded Conv to inject a fault into")
    node = convs[-1 if last else 0]
    for slot in (1, 2):
        if slot < len(node.input) and node.input[slot]:
            value = index.constant(node.input[slot]).value.copy()
            value[0] *= factor
            with index.editing(node):
                index.set_constant_input(node, slot, value, "faulty")
    return node.name or node.output[0]


def fault_check(path: Path, folded_model: onnx.ModelProto, folded: set[str], *, last: bool) -> str:
    """'caught: exit 1 (...)' or 'outputs pass: exit 0 (...)' for a fault in the first/last folded conv."""
    faulty = onnx.ModelProto()
    faulty.CopyFrom(folded_model)
    conv = inject_channel_fault(faulty, folded, last=last)
    tensor = next(n.output[0] for n in faulty.graph.node if (n.name or n.output[0]) == conv)
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "faulty.onnx"
        onnx.save(faulty, bad)
        check = bnfold.verify(path, bad, per_layer=True)
        at_fold = None if not check.passed else bnfold.verify(path, bad, check_tensors=[tensor])
    where = (check.first_divergence or {}).get("node", "-")
    verdict = "caught: exit 1" if not check.passed else "outputs pass: exit 0"
    if at_fold is not None:  # what optimize checks too: the fold's own tensor
        verdict += f", caught at the fold's tensor (check_tensors): exit {0 if at_fold.passed else 1}"
    return f"{verdict} ({'last' if last else 'first'} folded conv {conv}; first diverging node {where})"


def main(corpus: Path) -> None:
    header = ("| model | BN before | BN after | folds | verify max abs | max rel | error vs magnitude | cosine "
              "| injected 1 % channel fault |")
    print(header)
    print("|" + "---|" * 9)
    for path in sorted(corpus.glob("*.onnx")):
        result = bnfold.optimize(path)
        report = result.report
        worst = max(result.verification.outputs, key=lambda t: t.max_abs_error)
        folded = {f.output for f in report.applied if f.target_op == "Conv"}
        faults = [fault_check(path, result.model, folded, last=False)]
        if faults[0].startswith("outputs pass"):
            faults.append(fault_check(path, result.model, folded, last=True))
        print(f"| {path.name} | {report.before.batchnorms} | {report.after.batchnorms} | {len(report.applied)} "
              f"| {worst.max_abs_error:.2g} | {worst.max_rel_error:.2g} | {worst.error_vs_magnitude:.2g} "
              f"| {worst.cosine:.6f} | {'; '.join(faults)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CORPUS)
