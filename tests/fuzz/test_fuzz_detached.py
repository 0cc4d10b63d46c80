"""Lending weights to onnxruntime as arrays (bnfold.run.lending) changes nothing a model computes: bit for bit,
on random CNN graphs before and after folding, with every float initializer lent however small."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given

from bnfold import optimize
from bnfold.run import lending as detached
from bnfold.run.sessions import create_session
from tests.builders import feeds_for, session
from tests.fuzz.graphs import cnn_models
from tests.fuzz.test_fuzz_optimize import FUZZ, record


def _lent_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(detached, "LEND_MIN_BYTES", 0)
        split = detached.detach(model)
    lent = create_session(split)
    assert len(getattr(lent, "_bnfold_lent_values", [None])) == len(split.arrays)  # lent, no fallback
    record(f"{min(len(split.arrays), 3)}{'+' if len(split.arrays) >= 3 else ''} initializers lent")
    return lent.run(None, feeds)


@FUZZ
@given(cnn_models())
def test_lent_weights_compute_exactly_what_serialised_ones_do(model: onnx.ModelProto) -> None:
    folded = optimize(model, verify=False).model
    for candidate in (model, folded):
        feeds = feeds_for(candidate, seed=3)
        expected = session(candidate).run(None, feeds)
        got = _lent_outputs(candidate, feeds)
        for e, g in zip(expected, got, strict=True):
            assert e.dtype == g.dtype and e.shape == g.shape
            assert np.array_equal(e, g, equal_nan=True)
