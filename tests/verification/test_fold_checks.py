"""Each fold proven on its own input: no false reverts in deep fp32 and fp16-with-fp32-I/O chains, and
faults planted in one fold (shallow or deep, diluted at the outputs or not) caught by optimize (exactly that
fold reverted, in one pass) and by verify --per-layer (FAIL, that tensor named)."""

from __future__ import annotations

import pytest

import bnfold.optimizer as optimizer_module
from bnfold import optimize
from bnfold.verification.verifier import verify
from tests.verification.deep_models import bn_names, deep_chain, faulty_rules, hand_fold_faulty

DEPTH = 40


@pytest.fixture(scope="module")
def fp32_chain():
    return deep_chain(DEPTH)


@pytest.fixture(scope="module")
def fp16_chain():
    return deep_chain(DEPTH, fp16=True)


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16-keepio"])
def test_deep_chain_keeps_every_correct_fold(fp16, fp32_chain, fp16_chain):
    model = fp16_chain if fp16 else fp32_chain
    result = optimize(model)
    report = result.report
    assert len(report.applied) == DEPTH and report.reverted == (), report.reverted
    assert report.verification.status == "passed", report.verification.message
    assert all(c.checked_by == "local" and c.passed for c in report.checks)
    assert max(c.error_vs_tolerance for c in report.checks) < 1.0


def test_fp16_chain_folds_are_judged_as_float16_compute(fp16_chain):
    checks = optimize(fp16_chain).report.checks
    assert {c.tolerance.split(",")[0] for c in checks} == {"local: float16 compute"}


MUTANT_NAMES = ("scale_1pct", "bias_shift_5pct", "bias_swap", "fold_in_fp16")


@pytest.mark.parametrize("depth_index", [0, DEPTH - 1], ids=["shallow", "deep"])
@pytest.mark.parametrize("mutant", MUTANT_NAMES)
def test_optimize_reverts_exactly_the_faulty_fold(mutant, depth_index, fp32_chain, monkeypatch):
    anchor = bn_names(fp32_chain)[depth_index]
    monkeypatch.setattr(optimizer_module, "RULES", faulty_rules(anchor, mutant))
    result = optimize(fp32_chain)
    assert [r.node for r in result.report.reverted] == [anchor]
    assert result.report.reverted[0].checked_by == "local" and result.report.reverted[0].error_vs_tolerance > 1
    assert len(result.report.applied) == DEPTH - 1
    assert result.report.verification.status == "passed", result.report.verification.message


@pytest.mark.parametrize("depth_index", [0, DEPTH - 1], ids=["shallow", "deep"])
@pytest.mark.parametrize("mutant", MUTANT_NAMES)
def test_verify_per_layer_fails_and_names_the_faulty_tensor(mutant, depth_index, fp32_chain):
    anchor = bn_names(fp32_chain)[depth_index]
    broken = hand_fold_faulty(fp32_chain, anchor, mutant)
    tensor = next(n.output[0] for n in fp32_chain.graph.node if n.name == anchor)
    report = verify(fp32_chain, broken, per_layer=True)
    assert not report.passed
    assert report.first_divergence["tensor"] == tensor
    verdicts = {t.name: t.verdict for t in report.tensors + report.outputs}
    assert verdicts[tensor] == "fail"
    assert [n for n, v in verdicts.items() if v == "fail"] == [tensor]


def test_fault_diluted_to_nothing_at_the_outputs_still_fails_per_layer(fp32_chain):
    """The first fold's 5 % bias shift fades through 40 layers and a global pool: the outputs pass."""
    anchor = bn_names(fp32_chain)[0]
    broken = hand_fold_faulty(fp32_chain, anchor, "bias_shift_5pct")
    plain = verify(fp32_chain, broken)
    layered = verify(fp32_chain, broken, per_layer=True)
    assert all(o.passed for o in layered.outputs) and plain.passed
    assert not layered.passed and layered.first_divergence["tensor"] == f"{anchor}_out"


def test_correct_fold_has_no_failing_tensor_per_layer(fp32_chain):
    folded = optimize(fp32_chain, verify=False).model
    report = verify(fp32_chain, folded, per_layer=True)
    assert report.passed, report.summary()
    assert {t.verdict for t in report.tensors} <= {"pass", "drift"}
    assert all("local" in t.tolerance for t in report.tensors if t.name.startswith("batchnormalization"))


def test_fp16_chain_faulty_fold_is_caught(fp16_chain, monkeypatch):
    anchor = bn_names(fp16_chain)[DEPTH // 2]
    monkeypatch.setattr(optimizer_module, "RULES", faulty_rules(anchor, "scale_1pct"))
    result = optimize(fp16_chain)
    assert [r.node for r in result.report.reverted] == [anchor]
