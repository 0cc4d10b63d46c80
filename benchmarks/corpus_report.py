"""Fold and verify every model of ../shared/corpus; print BN before/after, verify figures, and whether an
injected fault (one output channel of one folded conv scaled by 1.01) is caught by `bnfold verify`.

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
from bnfold.graph import GraphIndex, NameAllocator

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def inject_channel_fault(model: onnx.ModelProto, folded: set[str], factor: float = 1.01) -> str:
    """Scale output channel 0 of the first folded Conv (one whose output is in *folded*) by *factor*."""
    index = GraphIndex(model.graph, label="main", opset=17, names=NameAllocator(model))
    for node in model.graph.node:
        if node.op_type != "Conv" or node.output[0] not in folded:
            continue
        for slot in (1, 2):
            if slot < len(node.input) and node.input[slot]:
                value = index.constant(node.input[slot]).value.copy()
                value[0] *= factor
                with index.editing(node):
                    index.set_constant_input(node, slot, value, "faulty")
        return node.name or node.output[0]
    raise SystemExit("no folded Conv to inject a fault into")


def main(corpus: Path) -> None:
    header = ("| model | BN before | BN after | folds | verify max abs | max rel | error vs magnitude | cosine "
              "| fault: exit | fault: first diverging tensor |")
    print(header)
    print("|" + "---|" * 10)
    for path in sorted(corpus.glob("*.onnx")):
        result = bnfold.optimize(path)
        report = result.report
        worst = max(result.verification.outputs, key=lambda t: t.max_abs_error)
        faulty = onnx.ModelProto()
        faulty.CopyFrom(result.model)
        conv = inject_channel_fault(faulty, {f.output for f in report.applied if f.target_op == "Conv"})
        with tempfile.TemporaryDirectory() as tmp:
            bad = Path(tmp) / "faulty.onnx"
            onnx.save(faulty, bad)
            check = bnfold.verify(path, bad, per_layer=True)
        where = (check.first_divergence or {}).get("node", "-")
        print(f"| {path.name} | {report.before.batchnorms} | {report.after.batchnorms} | {len(report.applied)} "
              f"| {worst.max_abs_error:.2g} | {worst.max_rel_error:.2g} | {worst.error_vs_magnitude:.2g} "
              f"| {worst.cosine:.6f} | {'caught: exit 1' if not check.passed else 'outputs pass: exit 0'} "
              f"| {where} (fault in {conv}) |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CORPUS)
