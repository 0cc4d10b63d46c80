"""The tier that folds without verification: every rule's positive and negative cases (``SAFETY_CASES`` in
each rule's test module or its ``cases_<rule>.py``, see tests/fold/rules/safety.py) go through
``optimize(verify=False)`` and the result is run in onnxruntime against the original. Verification may
revert a bad fold; no rule may need it.
"""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import onnx
import pytest

import tests.fold.rules as rule_tests
from bnfold import optimize
from bnfold.fold.rules import RULE_NAMES
from bnfold.reasons import Reason
from tests.builders import assert_equivalent, assert_fp16_no_worse, feeds_for, run
from tests.fold.rules.safety import SafetyCase

# Reasons no static rule gives: they come from verification or from the user's rule selection.
NOT_STATIC = frozenset({Reason.REVERTED_BY_VERIFICATION, Reason.RULE_DISABLED})


def _collect() -> dict[str, SafetyCase]:
    cases: dict[str, SafetyCase] = {}
    for info in pkgutil.iter_modules(rule_tests.__path__):
        if info.name.startswith(("test_", "cases_")) and info.name != "test_safe_without_verification":
            module = importlib.import_module(f"{rule_tests.__name__}.{info.name}")
            for name, case in getattr(module, "SAFETY_CASES", {}).items():
                assert name not in cases, f"duplicate safety case {name} in {info.name}"
                cases[name] = case
    return cases


CASES = _collect()


def _float16_compute(model: onnx.ModelProto) -> bool:
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


@pytest.mark.parametrize("name", CASES)
def test_folds_without_verification_and_keeps_the_outputs(name):
    case = CASES[name]
    model = case.build()
    result = optimize(model, verify=False)
    assert result.report.verification.status == "skipped"
    if case.reason is None:
        assert case.rule in {fold.rule for fold in result.report.applied}, result.report.refused
    else:
        assert (case.reason, case.rule) in {(s.reason, s.rule) for s in result.report.refused}, result.report.refused
    if not case.runnable:
        return
    if _float16_compute(model):
        assert_fp16_no_worse(model, result.model)
    else:
        assert_equivalent(model, result.model)
        assert_equivalent(model, result.model, seed=1)


def test_no_case_is_marked_unrunnable_without_need():
    """An unrunnable case skips the onnxruntime comparison: only where onnxruntime rejects the original
    or its outputs are not finite may a case say so."""
    for name, case in CASES.items():
        if case.runnable:
            continue
        model = case.build()
        try:
            outputs = run(model, feeds_for(model))
        except Exception:  # noqa: BLE001 - onnxruntime refused the model: unrunnable indeed
            continue
        assert not all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f"), f"{name} runs fine"


def test_every_rule_has_a_positive_case():
    covered = {case.rule for case in CASES.values() if case.reason is None}
    missing = [rule for rule in RULE_NAMES if rule not in covered]
    assert not missing, f"add positive SafetyCase entries to SAFETY_CASES of the tests of: {missing}"


def test_every_static_refusal_reason_has_a_negative_case():
    covered = {case.reason for case in CASES.values() if case.reason is not None}
    missing = [reason.value for reason in Reason if reason not in NOT_STATIC and reason not in covered]
    assert not missing, f"add a negative SafetyCase (SAFETY_CASES in a rule's tests) for: {missing}"
