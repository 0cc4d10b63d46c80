"""The reference's side of a site: a BatchNormalization's input magnitude follows from its output, so the
local check captures neither it nor (after the first sample) anything else."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bnfold import optimize
from bnfold.run.lending import LEND_MIN_BYTES
from bnfold.run.sessions import create_session
from bnfold.verification.fold_checks import FoldChecker
from bnfold.verification.ref_path import (
    ReferenceWeights,
    batchnorm_inverse,
    intermediates,
    inverted_peak,
    reference_path,
)
from tests.builders import GraphBuilder


def _conv_bn(gamma_zero: bool = False, **bn_attrs) -> onnx.ModelProto:
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 3, 8, 8])
    conv = b.conv(x, 16, name="conv")  # 16x3x3x3 weights: large enough to be lent
    params = b.bn_params(16)
    if gamma_zero:
        params[0][2] = 0.0
    b.output(b.bn(conv, params=params, name="bn", **bn_attrs))
    return b.build()


def _path(model: onnx.ModelProto):
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output if o}
    output = graph.output[0].name
    path = reference_path(producer, output, {"x"}, {t.name for t in graph.initializer})
    return path, output, intermediates(path, output)


def test_batchnorm_input_peak_follows_from_its_output():
    model = _conv_bn()
    path, output, (conv_out,) = _path(model)
    inverse = batchnorm_inverse(path, output, conv_out, ReferenceWeights(model, model))
    assert inverse is not None
    feed = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32) * 4}
    v, y = create_session(model, extra_outputs=[conv_out]).run([conv_out, output], feed)
    exact = np.abs(v).max(axis=(0, 2, 3))
    np.testing.assert_allclose(inverted_peak(inverse, y), exact, rtol=1e-5, atol=1e-6 * exact.max())
    y[0, 1, 0, 0] = np.nan  # a non-finite value counts as 0, the other channels are unchanged
    assert np.isfinite(inverted_peak(inverse, y)).all()


@pytest.mark.parametrize("model", [_conv_bn(gamma_zero=True), _conv_bn(training_mode=1)],
                         ids=["zero-scale", "training-mode"])
def test_batchnorm_input_is_captured_where_its_output_cannot_give_it(model):
    path, output, (conv_out,) = _path(model)
    assert batchnorm_inverse(path, output, conv_out, ReferenceWeights(model, model)) is None


def test_fold_checks_capture_no_batchnorm_input_and_nothing_after_the_first_sample():
    model = _conv_bn()
    folded = optimize(model, verify=False)
    checker = FoldChecker(model.graph, folded.model, folded.report.applied, ref_weights=ReferenceWeights(model, model))
    conv_out = model.graph.node[0].output[0]
    assert conv_out not in checker.capture and "x" in checker.capture
    feed = {"x": np.ones((1, 3, 8, 8), np.float32)}
    checker.observe({**feed, **dict(zip(checker.capture, create_session(
        model, extra_outputs=checker.capture).run(checker.capture, feed), strict=True))})
    assert checker.capture == [] and [c.passed for c in checker.results()] == [True]
    assert checker.local._built == {}  # the local models' sessions (and their arenas) went after judging


def test_shared_candidate_arrays_are_the_ones_judged():
    """A weight handed over by the candidate's detach is what the local model runs, not a second read."""
    model = _conv_bn()
    folded = optimize(model, verify=False).model
    weight = next(t for t in folded.graph.initializer if t.name == folded.graph.node[0].input[1])
    assert len(weight.raw_data) >= LEND_MIN_BYTES
    wrong = numpy_helper.to_array(weight) * np.float32(1.01)  # a copy that differs from the proto
    checker = FoldChecker(model.graph, folded, optimize(model, verify=False).report.applied,
                          ref_weights=ReferenceWeights(model, model), arrays={weight.name: wrong})
    feed = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    checker.observe({**feed, **dict(zip(checker.capture, create_session(
        model, extra_outputs=checker.capture).run(checker.capture, feed), strict=True))})
    assert [c.passed for c in checker.results()] == [False]


def test_sites_judged_in_groups_get_the_verdicts_of_one_local_model(monkeypatch):
    """LOCAL_GROUP_BYTES bounds the local values alive at a time; the grouping changes no verdict."""
    import bnfold.verification.local_check as local_check
    from tests.verification.deep_models import deep_chain

    model = deep_chain(6)
    whole = optimize(model).report.checks
    monkeypatch.setattr(local_check, "LOCAL_GROUP_BYTES", 1)  # one site per local model
    built = []
    build = local_check.LocalCheck._build
    monkeypatch.setattr(local_check.LocalCheck, "_build", lambda self, sites, values: built.append(len(sites))
                        or build(self, sites, values))
    grouped = optimize(model).report.checks
    assert built == [1] * 6
    assert len(whole) == 6 and all(c.checked_by == "local" and c.passed for c in grouped)
    assert [c.error_vs_tolerance for c in grouped] == [c.error_vs_tolerance for c in whole]
