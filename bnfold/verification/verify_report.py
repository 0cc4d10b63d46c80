"""The verdict of ``verify`` and every comparison behind it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bnfold.report import SCHEMA_VERSION, ReportMixin
from bnfold.run.inputs import InputSpec
from bnfold.verification.compare import TensorComparison
from bnfold.verification.output_tolerance import DEFAULT_TOLERANCES


@dataclass(frozen=True)
class VerifyReport(ReportMixin):
    """The verdict, every comparison behind it, and how the models were fed and run."""

    REPORT_KIND = "verify"  # the report contract (bnfold/report.py)

    passed: bool
    outputs: tuple[TensorComparison, ...]
    tensors: tuple[TensorComparison, ...]  # check_tensors first, then per-layer tensors in candidate order
    first_divergence: dict[str, str | None] | None  # {"tensor", "node", "op_type"}
    inputs: tuple[InputSpec, ...]
    samples: int
    seed: int
    atol: float | dict[str, float]  # one value, or {dtype: value} when tensors of several dtypes were compared
    rtol: float | dict[str, float]
    provider: str
    graph_optimizations: str = "disabled"
    notes: tuple[str, ...] = ()
    reason: str | None = None  # why it failed without a tensor to blame ("nothing comparable: ...")
    schema_version: int = SCHEMA_VERSION

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failures(self) -> tuple[TensorComparison, ...]:
        return tuple(c for c in self.outputs + self.tensors if not c.passed)

    def summary(self) -> str:
        """One line: what passed, or which tensor failed first and by how much."""
        if self.passed:
            return f"all {len(self.outputs)} outputs match ({self.samples} samples)"
        if self.reason:
            return self.reason
        local = [c for c in self.tensors if c.verdict == "fail"]
        if local and all(c.passed for c in self.outputs):
            return "; ".join(f"tensor {c.name!r} diverges where it is computed ({c.tolerance})" for c in local[:3])
        bad = [c for c in self.outputs if not c.passed] or list(self.failures)
        return "; ".join(_describe_failure(c, c in self.outputs) for c in bad[:3])


def _describe_failure(c: TensorComparison, is_output: bool) -> str:
    what = f"{'output' if is_output else 'tensor'} {c.name!r}"
    if c.note:
        return f"{what}: {c.note}"
    parts = [f"{c.mismatched} of {c.compared} elements out of tolerance"]
    if c.new_nonfinite:
        parts.append(f"{c.new_nonfinite} new NaN/inf")
    parts.append(f"max abs error {c.max_abs_error:.3g}, {c.max_scaled_error:.3g} of its channel's magnitude "
                 f"(atol {c.atol:g})")
    return f"{what} differs: " + ", ".join(parts)


def effective(comparisons: Sequence[TensorComparison], field: str, asked: float | None) -> float | dict[str, float]:
    """One number when one value applied to every compared tensor, else {dtype: value}."""
    by_dtype = {c.dtype: getattr(c, field) for c in comparisons}
    values = set(by_dtype.values())
    if len(values) == 1:
        return values.pop()
    if not values:  # nothing could be compared (the candidate did not run)
        return asked if asked is not None else getattr(DEFAULT_TOLERANCES["float32"], field)
    return by_dtype
