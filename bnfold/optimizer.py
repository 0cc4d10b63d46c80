"""``bnfold.optimize``: fold, clean up, verify in onnxruntime, revert folds that fail, report.

The library never prints or exits: failures raise typed errors, everything else is in the report.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import onnx

from bnfold import __version__
from bnfold.errors import ShapeGuessError, UsageError, VerificationFailed
from bnfold.fold.cleanup import clean_graph
from bnfold.fold.driver import AppliedFold, FoldOutcome, RefusedSite, fold_model
from bnfold.fold.rules import RULE_NAMES, RULES, Rule
from bnfold.fold.sizes import ModelStats, model_stats
from bnfold.fold.skeleton import skeleton
from bnfold.io.external_data import has_external_data
from bnfold.io.lazy_data import DataFolder
from bnfold.provenance import add_provenance, strip_provenance
from bnfold.report import SCHEMA_VERSION, ReportMixin
from bnfold.run.lending import detach

MAX_REVERTS = 16


@dataclass(frozen=True)
class RevertedFold:
    rule: str
    graph: str
    node: str
    output: str
    error_vs_magnitude: float
    max_abs_error: float


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

    @property
    def changed(self) -> bool:
        """True when the model differs from the input (folds applied or dead tensors removed)."""
        return bool(self.applied) or self.cleaned


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


def _fold(model: onnx.ModelProto, enabled, disabled, exclude, metadata: bool, data: DataFolder | None) -> FoldOutcome:
    cleaned_first = clean_graph(model.graph)  # a dead reader must not block a fold it would later vanish from
    outcome = fold_model(model, enabled, disabled=disabled, exclude=exclude, data=data)
    outcome.cleaned = clean_graph(model.graph) or cleaned_first
    if metadata and (outcome.applied or outcome.cleaned):
        strip_provenance(model)  # before any serialisation: this run's entries replace earlier ones
    return outcome


def optimize(model_or_path: onnx.ModelProto | str | os.PathLike, *, rules: Sequence[str] | None = None,
             skip_rules: Sequence[str] | None = None, verify: bool = True, revert: bool = True,
             strict: bool = False, force: bool = False, inputs: str | os.PathLike | None = None,
             input_shapes: Mapping[str, Sequence[int]] | None = None, samples: int = 2, seed: int = 0,
             value_range: tuple[float, float] | None = None, atol: float | None = None,
             rtol: float | None = None, provider: str = "cpu", metadata: bool = True) -> OptimizeResult:
    """Fold every BatchNormalization (and affine chain) that folds exactly; verify; report.

    A ModelProto argument is never modified (a copy is folded). With ``verify`` (default) the result is
    checked in onnxruntime against the original, including the output tensor of every fold; a fold whose
    tensor diverges is reverted (``revert``) and the rest re-checked. If outputs still differ,
    VerificationFailed is raised unless ``force``. If onnxruntime rejects the default input shapes, the
    result is returned marked "not_verified" (or VerificationFailed with ``strict``).
    """
    enabled, disabled = select_rules(rules, skip_rules)
    model, reference, data, external = _load(model_or_path)
    before = model_stats(model)
    if verify:
        reference = _reference(model, reference)
    started = time.perf_counter()
    outcome = _fold(model, enabled, disabled, frozenset(), metadata, data)
    _release_freed_memory()
    fold_seconds = time.perf_counter() - started
    check = dict(inputs=inputs, input_shapes=input_shapes, samples=samples, seed=seed, value_range=value_range,
                 atol=atol, rtol=rtol, provider=provider)
    refold = functools.partial(_refold, model_or_path, enabled, disabled, metadata)
    reverted: tuple[RevertedFold, ...] = ()
    verification, summary = None, VerificationSummary("skipped", "verification disabled")
    if verify and not outcome.applied:
        summary = VerificationSummary("unchanged", "nothing was folded")
    elif verify:
        model, outcome, verification, summary, reverted = _verify_and_revert(
            model, outcome, refold, reference, check, revert, data)
    report = FoldReport(rules=tuple(r.name for r in enabled), applied=tuple(outcome.applied),
                        refused=tuple(outcome.refused), reverted=reverted, tensor_map=outcome.tensor_map,
                        before=before, after=model_stats(model), passes=outcome.passes,
                        fold_seconds=round(fold_seconds, 6), verification=summary, cleaned=outcome.cleaned)
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


def _refold(source, enabled, disabled, metadata, exclude: frozenset[str]) -> tuple[onnx.ModelProto, FoldOutcome]:
    model, _, data, _ = _load(source)  # a fresh original: from disk (lazily), or a copy of the caller's proto
    return model, _fold(model, enabled, disabled, exclude, metadata, data)


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
    """What verification leaves: the model and fold outcome kept (after any reverts), the verify report
    (None when the model could not be run), the summary, and the folds reverted on the way."""

    model: onnx.ModelProto
    outcome: FoldOutcome
    report: Any
    summary: VerificationSummary
    reverted: tuple[RevertedFold, ...]


def _verify_and_revert(model, outcome: FoldOutcome, refold, reference: Reference, check: dict, revert: bool,
                       data: DataFolder | None) -> _Checked:
    """Verify; while a fold's own tensor diverges, re-fold without it (most upstream first)."""
    from bnfold.verification.verifier import verify as run_verify

    reverted: list[RevertedFold] = []
    exclude: set[str] = set()
    with contextlib.ExitStack() as stack:
        scratch = functools.cache(lambda: stack.enter_context(tempfile.TemporaryDirectory(prefix="bnfold-verify-")))
        while True:
            try:
                report = run_verify(reference.source, _candidate(model, scratch, data),
                                    check_tensors=_checkable(model, outcome.applied, reference.structure),
                                    structures=(reference.structure, model), **check)
            except ShapeGuessError as exc:  # our guessed shapes; a user's bad --input-shape still raises
                summary = VerificationSummary("not_verified", str(exc))
                return _Checked(model, outcome, None, summary, tuple(reverted))
            bad = None if report.passed else _first_failing_fold(outcome.applied, report)
            if bad is None or not revert or len(exclude) >= MAX_REVERTS:
                summary = (VerificationSummary("passed", "", report.to_dict()) if report.passed
                           else VerificationSummary("failed", report.summary(), report.to_dict()))
                return _Checked(model, outcome, report, summary, tuple(reverted))
            fold, tensor = bad
            reverted.append(RevertedFold(rule=fold.rule, graph=fold.graph, node=fold.node, output=fold.output,
                                         error_vs_magnitude=float(tensor.error_vs_magnitude),
                                         max_abs_error=float(tensor.max_abs_error)))
            exclude.add(fold.key)
            model, outcome = refold(frozenset(exclude))


def _checkable(model: onnx.ModelProto, applied: Sequence[AppliedFold], original: onnx.ModelProto) -> list[str]:
    """Fold outputs still present in the main graph (a later fold in a chain may have absorbed one) and
    present in the original (a fold across a Concat/Add renames the tensors whose values it changes)."""
    produced = {out for node in model.graph.node for out in node.output}
    produced &= {out for node in original.graph.node for out in node.output}
    return [a.output for a in applied if a.graph == "main" and a.output in produced]


def _first_failing_fold(applied: Sequence[AppliedFold], report) -> tuple[AppliedFold, Any] | None:
    """The fold to revert: the most upstream one whose own tensor fails; if only graph outputs fail (an
    error that grows downstream, e.g. through a high-gain layer), the one closest to its tolerance."""
    # a fold's output may itself be a graph output, compared under report.outputs
    compared = {t.name: t for t in (*report.outputs, *report.tensors)}
    for fold in applied:  # applied is in graph order, so the first hit is the most upstream
        tensor = compared.get(fold.output)
        if tensor is not None and not tensor.passed:
            return fold, tensor
    ratios = [(_closeness(compared[f.output]), i) for i, f in enumerate(applied) if f.output in compared]
    ratios = [(r, i) for r, i in ratios if math.isfinite(r)]
    if not ratios or all(o.passed for o in report.outputs):
        return None
    _, index = max(ratios)
    return applied[index], compared[applied[index].output]


def _closeness(tensor) -> float:
    """How close a passing tensor came to failing: its scaled error over its tolerance."""
    return tensor.max_scaled_error / tensor.atol if tensor.atol > 0 else math.inf
