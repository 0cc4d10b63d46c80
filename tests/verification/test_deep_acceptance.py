"""Issue 11's acceptance tier: verification that knows its own arithmetic, on deep networks.

Every deep builder (ResNet-101, DenseNet-201, 4-level 3-D U-Net), fp32 and fp16-compute/fp32-I/O, small size:
verified optimize keeps every fold; each mutant (one channel x1.01, a bias +5 % of the spread, two biases swapped,
the fold rounded through float16) at the first, middle and deepest folded conv is caught by optimize (exactly that
fold reverted, all others kept) and by verify(per_layer=True) (failed, the mutated conv's output named as the
first divergence), including a fault that is diluted below the output tolerance. Before the per-fold checks,
the fp16 models lost 16 folds each and failed, and a quarter of the mutants were missed.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import bnfold
import models
from bnfold.errors import VerificationFailed
from tests.verification import mutants as M

FP16_KIND = M.KINDS[-1]  # the fold computed in fp16
SAMPLES = 1  # mutants are deterministic faults; one random sample is enough and keeps the file fast


@pytest.fixture(scope="module", params=models.DEEP_NAMES)
def deep(request):
    model = models.build(request.param)
    plain = bnfold.optimize(model, verify=False)
    assert plain.report.applied
    return request.param, model, plain


def _optimize(model):
    try:
        return bnfold.optimize(model, samples=SAMPLES).report
    except VerificationFailed as exc:  # keep the report so that the assertion says what was reverted
        return exc.report


def test_verified_optimize_keeps_every_correct_fold(deep):
    name, model, plain = deep
    result = bnfold.optimize(model)  # default samples: this is the user's path
    assert [r.node for r in result.report.reverted] == [], name
    assert result.report.verification.status == "passed", result.report.verification.message
    assert len(result.report.applied) == len(plain.report.applied)
    assert bnfold.verify(model, plain.model, per_layer=True).passed


def _cases():
    for kind in M.KINDS:
        for depth in M.DEPTHS:
            yield kind, depth


@pytest.mark.parametrize(("kind", "depth"), list(_cases()))
def test_mutant_caught_by_optimize_and_by_per_layer_verify(deep, kind, depth):
    name, model, plain = deep
    applied = plain.report.applied
    if kind == FP16_KIND and name.endswith("_fp16io"):  # its weights are fp16 already: no such fault exists
        with pytest.raises(M.NotApplicable):
            M.mutate(plain.model, applied, kind, depth)
        return
    mutant = M.mutate(plain.model, applied, kind, depth)
    expected = {a.node for a in applied if a.target == mutant.node}
    with M.injected(kind, mutant.node) as made:
        report = _optimize(model)
    assert made, "the mutant was injected"
    reverted = {r.node for r in report.reverted}
    assert reverted == expected, f"{mutant.description}: reverted {sorted(reverted)}"
    assert len(report.applied) == len(applied) - len(expected), "every other fold kept"
    check = bnfold.verify(model, mutant.model, per_layer=True, samples=SAMPLES)
    assert not check.passed, mutant.description
    assert check.first_divergence is not None
    assert check.first_divergence["tensor"] == mutant.output, (mutant.description, check.first_divergence)


def _outputs(model, feeds):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


DEAD_BETA = -50.0  # far below anything the conv puts into that channel: the following Relu always gives 0


def test_fault_diluted_to_nothing_at_the_outputs_still_fails_per_layer_verify():
    """A channel of the 3-D U-Net's first Conv -> BN -> Relu made always-negative (beta -50, as a pruned or dead
    channel in a trained net is), then that fold's bias shifted by 5 % of the spread: the Relu still gives 0, so the
    outputs are bit-identical to the correct fold's, yet the fold is wrong. Per-layer verify must FAIL there."""
    from onnx import numpy_helper

    model = models.build("unet3d_deep")
    beta = next(t for t in model.graph.initializer if t.name == "enc0.conv1_bn.bias")
    values = numpy_helper.to_array(beta).copy()
    values[0] = DEAD_BETA
    beta.CopyFrom(numpy_helper.from_array(values, beta.name))
    plain = bnfold.optimize(model, verify=False)
    mutant = _shift_channel(plain.model, "/enc0/conv1/Conv", 0)
    feeds = models.random_inputs(model, batch=1, seed=0)
    ref, got = (_outputs(m, feeds)[0] for m in (plain.model, mutant.model))
    np.testing.assert_array_equal(got, ref, err_msg="precondition: the fault is invisible at the outputs")
    check = bnfold.verify(model, mutant.model, per_layer=True)
    assert not check.passed, "a fold that is wrong must FAIL even where the outputs hide it"
    assert check.first_divergence["tensor"] == mutant.output
    report = _optimize_with_shift(model, "/enc0/conv1/Conv", 0)
    assert [r.node for r in report.reverted] == ["/enc0/conv1_bn/BatchNormalization"]


def _shift_channel(folded, node_name: str, channel: int) -> M.Mutant:
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(folded)
    node = next(n for n in model.graph.node if n.name == node_name)
    _shift_in_place(model, node, channel)
    return M.Mutant(model, "shift", "first", node_name, node.output[0], (node.input[2],), (channel,),
                    f"bias channel {channel} of {node_name} + 5 % of the spread (a dead channel)")


def _shift_in_place(model, node, channel: int) -> None:
    from onnx import numpy_helper

    bias = next(t for t in model.graph.initializer if t.name == node.input[2])
    b = numpy_helper.to_array(bias).copy()
    b[channel] += np.float32(M.SHIFT_OF_SPREAD * float(b.max() - b.min()))
    bias.CopyFrom(numpy_helper.from_array(b, bias.name))


def _optimize_with_shift(model, node_name: str, channel: int):
    """optimize with this dead-channel shift injected into its fold (mutants.injected, by hand for one channel)."""
    from bnfold.fold import driver

    original = driver.fold_model

    def faulty(m, *args, **kwargs):
        outcome = original(m, *args, **kwargs)
        if any(a.target == node_name for a in outcome.applied):
            _shift_in_place(m, next(n for n in m.graph.node if n.name == node_name), channel)
        return outcome

    holders = M._bnfold_modules_holding(original)
    for module, attr in holders:
        setattr(module, attr, faulty)
    try:
        return _optimize(model)
    finally:
        for module, attr in holders:
            setattr(module, attr, original)
