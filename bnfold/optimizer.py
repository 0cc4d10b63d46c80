"""``bnfold.optimize``: fold, clean up, verify in onnxruntime, revert folds that fail, report.

The library never prints or exits: failures raise typed errors, everything else is in the report.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import onnx

from bnfold import __version__
from bnfold.errors import ShapeGuessError, UsageError, VerificationFailed
from bnfold.fold.driver import AppliedFold, FoldOutcome, RefusedSite, fold_and_clean
from bnfold.fold.rules import RULE_NAMES, RULES, Rule
from bnfold.fold.sizes import ModelStats, model_stats
from bnfold.fold.skeleton import skeleton
from bnfold.io.atomic import scratch_folder
from bnfold.io.external_data import has_external_data
from bnfold.io.lazy_data import DataFolder
from bnfold.io.signals import deferred_signals
from bnfold.provenance import add_provenance, strip_provenance
from bnfold.report import SCHEMA_VERSION, ReportMixin
from bnfold.run.lending import detach


@dataclass(frozen=True)
class RevertedFold:
    rule: str
    graph: str
    node: str
    output: str
    error_vs_magnitude: float
    max_abs_error: float
    error_vs_tolerance: float | None = None  # local check: worst error / that layer's tolerance
    checked_by: str = "local"  # "local" | "outputs"


@dataclass(frozen=True)
class VerificationSummary:
    status: str  # "passed" | "failed" | "skipped" | "not_verified" | "unchanged"
    message: str = ""
    details: dict[str, Any] | None = None

    def worst_output(self) -> dict[str, Any] | None:
        """The compared output furthest from the reference on the tolerance's own scale (max_scaled_error:
        error over max(1, channel magnitude)); relative error alone misleads for outputs near zero."""
        outputs = [o for o in (self.details or {}).get("outputs", []) if isinstance(o.get("max_scaled_error"), float)]
        return max(outputs, key=lambda o: o["max_scaled_error"], default=None)


@dataclass(frozen=True)
class FoldReport(ReportMixin):
    """What optimize did, what it left, and why. JSON via ``to_json()``."""

    REPORT_KIND = "optimize"  # the report contract (bnfold/report.py)

    rules: tuple[str, ...]
    applied: tuple[AppliedFold, ...]
    refused: tuple[RefusedSite, ...]
    reverted: tuple[RevertedFold, ...]
    tensor_map: dict[str, str | None]
    before: ModelStats
    after: ModelStats
    passes: int
    fold_seconds: float
    verification: VerificationSummary
    schema_version: int = SCHEMA_VERSION
    bnfold_version: str = __version__

    cleaned: bool = False
    removed_inputs: tuple[str, ...] = ()  # initializer-backed graph inputs taken out (freeze_initializers)
    checks: tuple = ()  # bnfold.verification.fold_checks.FoldCheck per applied fold: how, and with what result

    @property
    def changed(self) -> bool:
        """True when the model differs from the input (folds applied, dead tensors or frozen inputs removed)."""
        return bool(self.applied) or self.cleaned or bool(self.removed_inputs)


@dataclass(frozen=True)
class OptimizeResult:
    """The folded model and its report; ``to_bytes()`` serialises it.

    A model file with external data is loaded lazily: ``model`` then still refers to the weights the fold
    left unchanged, in their data files in ``external_folder`` (the input's folder). Save it with
    ``bnfold.io.save_model(result.model, path, source_folder=result.external_folder)``, which copies them.
    """

    model: onnx.ModelProto
    report: FoldReport
    verification: Any | None = None  # bnfold.verification.VerifyReport
    source_external_data: bool = False  # the input file kept tensors in external data files
    external_folder: Path | None = None  # where ``model``'s remaining external tensors live; None: none remain

    def to_bytes(self) -> bytes:
        """The model serialised. Refused for a model still reading external data files."""
        if self.external_folder is not None:
            raise UsageError("this model still reads tensors from external data files; save it with "
                             "bnfold.io.save_model(result.model, path, source_folder=result.external_folder)")
        return self.model.SerializeToString()


class Reference(NamedTuple):
    """What verification compares against: the original (a path, or its structure and weights held apart
    from the model being folded) and its graph structure."""

    source: Any
    structure: onnx.ModelProto


def select_rules(rules: Sequence[str] | None, skip_rules: Sequence[str] | None) -> tuple[list[Rule], list[Rule]]:
    """(enabled, disabled) rules in registry order; unknown names raise UsageError."""
    if rules is not None and skip_rules is not None:
        raise UsageError("use either rules or skip_rules, not both")
    named = set(rules or ()) | set(skip_rules or ())
    unknown = sorted(named - set(RULE_NAMES))
    if unknown:
        raise UsageError(f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(RULE_NAMES)}")
    wanted = set(RULE_NAMES) if rules is None else set(rules)
    wanted -= set(skip_rules or ())
    return [r for r in RULES if r.name in wanted], [r for r in RULES if r.name not in wanted]


def _load(model_or_path: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, Any, DataFolder | None, bool]:
    """(a model we may mutate, the reference to verify against, where its still-external initializers live,
    whether the file used external data). A file's initializers stay in their data files until read."""
    if isinstance(model_or_path, onnx.ModelProto):
        work = onnx.ModelProto()
        work.CopyFrom(model_or_path)
        return work, model_or_path, None, False
    from bnfold.io.model_file import load_model_and_layout, model_folder

    model, external = load_model_and_layout(model_or_path, lazy=True)
    data = DataFolder(model_folder(model_or_path)) if external else None
    return model, os.fspath(model_or_path), data, external


def _fold(model: onnx.ModelProto, enabled, disabled, exclude, metadata: bool, data: DataFolder | None,
          freeze: bool = False) -> FoldOutcome:
    outcome = fold_and_clean(model, enabled, disabled=disabled, exclude=exclude, data=data, freeze_initializers=freeze)
    if metadata and (outcome.applied or outcome.cleaned or outcome.removed_inputs):
        strip_provenance(model)  # before any serialisation: this run's entries replace earlier ones
    return outcome


def optimize(model_or_path: onnx.ModelProto | str | os.PathLike, *, rules: Sequence[str] | None = None,
             skip_rules: Sequence[str] | None = None, verify: bool = True, revert: bool = True,
             strict: bool = False, force: bool = False, inputs: str | os.PathLike | None = None,
             input_shapes: Mapping[str, Sequence[int]] | None = None, samples: int = 2, seed: int = 0,
             value_range: tuple[float, float] | None = None, atol: float | None = None,
             rtol: float | None = None, provider: str = "cpu", metadata: bool = True,
             freeze_initializers: bool = False) -> OptimizeResult:
    """Fold every BatchNormalization (and affine chain) that folds exactly; verify; report.

    A ModelProto argument is never modified (a copy is folded). With ``verify`` (default) the result is
    checked in onnxruntime against the original: every fold on the reference's own input to it (tolerance
    from that layer's arithmetic), and the outputs end to end; the folds that fail are reverted in one pass
    (``revert``) and the rest re-checked once (``report.checks`` says how each fold was checked). If it still fails,
    VerificationFailed is raised unless ``force``. If onnxruntime rejects the default input shapes, the
    result is returned marked "not_verified" (or VerificationFailed with ``strict``). ``freeze_initializers``:
    take initializers out of the graph inputs (IR >= 4: overridable, so refused otherwise) and fold them.
    """
    enabled, disabled = select_rules(rules, skip_rules)
    model, reference, data, external = _load(model_or_path)
    before = model_stats(model)
    if verify:
        reference = _reference(model, reference)
    started = time.perf_counter()
    outcome = _fold(model, enabled, disabled, frozenset(), metadata, data, freeze_initializers)
    _release_freed_memory()
    fold_seconds = time.perf_counter() - started
    check = dict(inputs=inputs, input_shapes=input_shapes, samples=samples, seed=seed, value_range=value_range,
                 atol=atol, rtol=rtol, provider=provider)
    refold = functools.partial(_refold, model_or_path, enabled, disabled, metadata, freeze_initializers)
    reverted: tuple[RevertedFold, ...] = ()
    checks: tuple = ()
    verification, summary = None, VerificationSummary("skipped", "verification disabled")
    if verify and not outcome.applied:
        summary = VerificationSummary("unchanged", "nothing was folded")
    elif verify:
        model, outcome, verification, summary, reverted, checks = _verify_and_revert(
            model, outcome, refold, reference, check, revert, data)
    report = FoldReport(rules=tuple(r.name for r in enabled), applied=tuple(outcome.applied),
                        refused=tuple(outcome.refused), reverted=reverted, tensor_map=outcome.tensor_map,
                        before=before, after=model_stats(model), passes=outcome.passes,
                        fold_seconds=round(fold_seconds, 6), verification=summary, cleaned=outcome.cleaned,
                        removed_inputs=tuple(outcome.removed_inputs), checks=checks)
    if metadata and report.changed:
        add_provenance(model, report)
    result = OptimizeResult(model=model, report=report, verification=verification, source_external_data=external,
                            external_folder=data.folder if data is not None and has_external_data(model) else None)
    _raise_on_failure(result, strict=strict, force=force)
    return result


def _reference(model: onnx.ModelProto, source) -> Reference:
    """The original, kept apart before the fold changes *model*: its weights as arrays (lent to onnxruntime
    without serialising them), or, where they stay in external data files, the file and its structure."""
    detached = detach(model)
    if detached is None:
        return Reference(source, skeleton(model))
    return Reference(detached, detached.structure)


def _release_freed_memory() -> None:
    """Hand freed fold temporaries back to the OS before the model is serialised (glibc keeps them
    otherwise, adding tens of MB to the peak); a no-op where malloc_trim doesn't exist."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _raise_on_failure(result: OptimizeResult, *, strict: bool, force: bool) -> None:
    status = result.report.verification.status
    if status == "failed" and not force:
        raise VerificationFailed(f"verification failed: {result.report.verification.message}", result.report)
    if status == "not_verified" and strict:
        raise VerificationFailed(f"not verified (--strict): {result.report.verification.message}", result.report)


def _refold(source, enabled, disabled, metadata, freeze: bool,
            exclude: frozenset[str]) -> tuple[onnx.ModelProto, FoldOutcome]:
    model, _, data, _ = _load(source)  # a fresh original: from disk (lazily), or a copy of the caller's proto
    return model, _fold(model, enabled, disabled, exclude, metadata, data, freeze)


def _candidate(model: onnx.ModelProto, scratch: Callable[[], str], data: DataFolder | None) -> Any:
    """What to hand onnxruntime: the model itself (its weights are lent as arrays, never serialised), or,
    for a lazy model that still refers to its source's data files, a temporary external-data file:
    onnxruntime reads the new payloads from disk and the unchanged ones from copies of their files."""
    from bnfold.io import model_file as io

    if data is None or not has_external_data(model):
        return model
    path = os.path.join(scratch(), "candidate.onnx")  # each re-verification replaces the previous candidate
    io.save_model(model, path, external_data=True, source_folder=data.folder)
    return path


class _Checked(NamedTuple):
    """The model and fold outcome kept, the verify report (None: not run), summary, reverts, fold checks."""

    model: onnx.ModelProto
    outcome: FoldOutcome
    report: Any
    summary: VerificationSummary
    reverted: tuple[RevertedFold, ...]
    checks: tuple[Any, ...] = ()  # bnfold.verification.fold_checks.FoldCheck, one per applied fold


def _verify_and_revert(model, outcome: FoldOutcome, refold, reference: Reference, check: dict, revert: bool,
                       data: DataFolder | None) -> _Checked:
    """Verify every fold on its own input and the outputs end to end; revert the failing folds in ONE pass
    (re-fold once without all of them, check once more)."""
    with contextlib.ExitStack() as stack:
        scratch = functools.cache(lambda: _enter_scratch(stack))
        from bnfold.verification.fold_checks import folds_to_revert

        try:
            report, checks = _check(model, outcome, reference, check, data, scratch)
            failing = folds_to_revert(report, checks)
            if not failing or not revert:
                return _checked(model, outcome, report, checks, ())
            reverted = tuple(_reverted(c) for c in checks if c.key in failing)
            model, outcome = refold(frozenset(failing))
            report, checks = _check(model, outcome, reference, check, data, scratch)
        except ShapeGuessError as exc:  # our guessed shapes; a user's bad --input-shape still raises
            return _Checked(model, outcome, None, VerificationSummary("not_verified", str(exc)), ())
        return _checked(model, outcome, report, checks, reverted)


def _enter_scratch(stack: contextlib.ExitStack) -> str:
    """A scratch folder whose removal *stack* owns: a signal between its creation and that registration
    would leave it behind, so it waits until both are done."""
    with deferred_signals():
        return stack.enter_context(scratch_folder("bnfold-verify-"))


def _check(model, outcome: FoldOutcome, reference: Reference, check: dict, data: DataFolder | None, scratch):
    from bnfold.verification.fold_checks import verify_folds

    return verify_folds(reference, _candidate(model, scratch, data), model, outcome.applied, check,
                        str(data.folder) if data is not None else None)


def _checked(model, outcome, report, checks, reverted) -> _Checked:
    from bnfold.verification.fold_checks import failure_message

    message = failure_message(report, checks)
    summary = VerificationSummary("failed" if message else "passed", message or "", report.to_dict())
    return _Checked(model, outcome, report, summary, tuple(reverted), tuple(checks))


def _reverted(c) -> RevertedFold:
    nan = math.nan
    return RevertedFold(rule=c.rule, graph=c.graph, node=c.node, output=c.output, checked_by=c.checked_by,
                        error_vs_magnitude=nan if c.error_vs_magnitude is None else c.error_vs_magnitude,
                        max_abs_error=nan if c.max_abs_error is None else c.max_abs_error,
                        error_vs_tolerance=c.error_vs_tolerance)
