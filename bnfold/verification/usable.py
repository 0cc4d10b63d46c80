"""Checks that a verification had something to judge: finite feeds, and compared outputs with data.

A PASS that compared 0 elements (an empty dim, batch 0) or only NaN/inf says nothing: it fails with a reason
(exit 1, "nothing comparable"). Feeds holding NaN/inf (all-NaN ``--inputs``, a ``--range`` that overflows
the input's dtype) are refused before anything runs (InputSpecError, exit 3, "unusable inputs").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from bnfold.errors import InputSpecError
from bnfold.run.inputs import InputSpec
from bnfold.verification.verify_report import VerifyReport


def shape_advice(specs: Sequence[InputSpec], ort_message: str) -> str:
    message = f"onnxruntime cannot run the reference model on the inputs used ({ort_message})"
    guessed = [s for s in specs if s.chosen]
    if not guessed:
        return message
    details = "; ".join(
        f"{s.name} dims {', '.join(map(str, s.chosen))} guessed as {', '.join(map(str, s.chosen.values()))}"
        for s in guessed
    )
    examples = " ".join(
        "--input-shape " + s.name + ":" + "x".join(f"<d{i}>" if i in s.chosen and i else str(d)
                                                   for i, d in enumerate(s.shape))
        for s in guessed
    )
    return f"{message}. Unknown dims were guessed: {details}. Give the real sizes, e.g. {examples}"


def require_finite(feeds: Sequence[dict[str, np.ndarray]]) -> None:
    """Feeds holding NaN/inf carry no information about either model: refuse them (exit 3)."""
    for feed in feeds:
        for name, value in feed.items():
            array = np.asarray(value)
            if array.dtype.kind in "fc" and array.size and not np.isfinite(array).all():
                bad = int(array.size - np.count_nonzero(np.isfinite(array)))
                raise InputSpecError(
                    f"unusable inputs: input {name!r} holds {bad} NaN/inf of {array.size} values (a --range "
                    "beyond its dtype overflows to inf); nothing could be verified with them")


def finite_count(values: Mapping[str, np.ndarray], names: Sequence[str]) -> int:
    total = 0
    for name in names:
        a = np.asarray(values[name])
        total += int(np.count_nonzero(np.isfinite(a))) if a.dtype.kind in "fc" else int(a.size)
    return total


def nothing_comparable(report: VerifyReport, finite: int) -> VerifyReport:
    """A PASS that compared no element (empty outputs, batch 0) or only NaN/inf is no pass."""
    if finite > 0 or not report.passed:
        return report
    return replace(report, passed=False, reason="nothing comparable: the reference's outputs held "
                   f"{'no elements' if not any(o.compared for o in report.outputs) else 'no finite value'} "
                   "on these inputs (empty dims or batch 0, or NaN/inf); give inputs with data")
