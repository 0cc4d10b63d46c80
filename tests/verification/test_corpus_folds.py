"""Issue 11 on real models: every correct fold of the corpus (framework exports included) is kept by
verified optimize, each proven on its own input; the fp16 Keras export with fp32 I/O lost 4 correct folds
to the old fixed tolerance. Skipped visibly where ../shared/corpus is absent."""

from __future__ import annotations

import pytest

from bnfold import optimize
from bnfold.verification.verifier import verify

FP16_KEEPIO = "exporters/fp16__tf2onnx-handbuilt-tfkeras_op15__keepio.onnx"
EXPORTS = ("exporters/tf2onnx__handbuilt__tfkeras_op15.onnx", "exporters/tf2onnx__handbuilt__keras3_op15.onnx",
           "exporters/paddle2onnx__mobilenet_v3_small__op13.onnx", FP16_KEEPIO)


def _path(corpus_dir, name):
    path = corpus_dir / name
    if not path.exists():
        pytest.skip(f"{path} missing from the corpus")
    return path


def test_fp16_keepio_export_keeps_every_fold(corpus_dir):
    result = optimize(_path(corpus_dir, FP16_KEEPIO))
    report = result.report
    assert report.reverted == (), report.reverted
    assert len(report.applied) >= 4
    assert report.verification.status == "passed", report.verification.message
    local = [c for c in report.checks if c.checked_by == "local"]
    assert local and all(c.passed for c in local)
    assert {c.tolerance.split(",")[0] for c in local} == {"local: float16 compute"}


@pytest.mark.parametrize("name", EXPORTS)
def test_framework_export_keeps_every_fold_and_per_layer_passes(name, corpus_dir, tmp_path):
    path = _path(corpus_dir, name)
    result = optimize(path)
    assert result.report.reverted == () and result.report.verification.status == "passed"
    out = tmp_path / "folded.onnx"
    out.write_bytes(result.to_bytes())
    layered = verify(path, out, per_layer=True, samples=1)
    assert layered.passed, layered.summary()
    assert not [t.name for t in layered.tensors if t.verdict == "fail"]
