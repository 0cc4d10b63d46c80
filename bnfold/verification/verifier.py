"""Does the candidate compute what the reference computes? Run both in onnxruntime and compare.

Both models run with onnxruntime's graph optimisations DISABLED, on the same feeds: otherwise ORT
would fuse BatchNormalization into the reference at session time and the check would compare ORT's
fold against ours. Outputs are matched by name (one missing from the candidate fails). Two kinds of
intermediate tensors can be added, both made extra graph outputs on both sides:

- ``check_tensors`` (names produced in both graphs) count for the verdict;
- ``per_layer`` adds every data-dependent float tensor the two graphs share, and recomputes the
  candidate's producer of each on the REFERENCE's values of its inputs (:mod:`bnfold.verification.local_check`):
  a tensor whose own node disagrees beyond that layer's arithmetic is ``fail`` (the verdict fails, and
  ``first_divergence`` names the first such tensor in the candidate's node order); one that is off only
  because its inputs are (upstream rounding accumulating) is ``drift``; otherwise ``pass``.

Output tolerances come from the arithmetic behind each output and the model's measured noise
(:mod:`bnfold.verification.output_tolerance`). A check that compared nothing (0 elements, or no finite
reference value) fails with ``reason``; feeds that are not finite are refused (InputSpecError, exit 3).
``observers`` receive each sample's reference values of the names they ``capture`` (optimize's fold checks),
so the reference runs once for both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx

from bnfold.errors import ShapeGuessError, UsageError
from bnfold.io.external_data import has_external_data
from bnfold.run.inputs import InputSpec, make_feeds
from bnfold.run.lending import detach
from bnfold.run.sessions import ModelSource, create_session, load_graph, one_line
from bnfold.verification.compare import Tolerance, WorstCase, compare_arrays
from bnfold.verification.noise import rejudge_with_floor
from bnfold.verification.output_tolerance import (
    DEFAULT_TOLERANCES,
    EXACT,
    describe_basis,
    output_arithmetic,
    output_tolerance,
)
from bnfold.verification.per_layer import PerLayer
from bnfold.verification.tensor_plan import TensorPlan, check_same_inputs, plan_tensors
from bnfold.verification.usable import finite_count, nothing_comparable, require_finite, shape_advice
from bnfold.verification.verify_report import VerifyReport, effective

__all__ = ["DEFAULT_TOLERANCES", "EXACT", "VerifyReport", "verify"]


class Observer(Protocol):
    @property
    def capture(self) -> list[str]: ...  # read-only: PerLayer and FoldChecker expose it as a property
    # (read before every sample: once every observer's is empty, later samples run without the captures)

    def observe(self, values: Mapping[str, np.ndarray]) -> None: ...


def verify(
    reference: ModelSource,
    candidate: ModelSource,
    *,
    inputs: str | Path | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    per_layer: bool = False,
    samples: int = 2,
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
    provider: str = "cpu",
    check_tensors: Sequence[str] = (),
    structures: tuple[onnx.ModelProto | None, onnx.ModelProto | None] = (None, None),
    observers: Sequence[Observer] = (),
) -> VerifyReport:
    """Run *reference* and *candidate* on the same feeds and compare them (see the module docstring).

    *structures*: the two models' graphs where the caller holds them already (weights not needed), so a
    big model's bytes are not parsed again just to read names and shapes.

    Raises UsageError when the two models cannot be compared (different inputs, unknown
    check_tensors), ShapeGuessError (an InputSpecError) when the reference cannot run on the chosen inputs,
    InputSpecError when the feeds hold NaN/inf, and ModelLoadError when onnxruntime rejects a model. A
    mismatch is not an exception: it is a report with ``passed=False``.
    """
    for value, what in ((atol, "atol"), (rtol, "rtol")):
        if value is not None and not value >= 0:
            raise UsageError(f"{what} must be >= 0, got {value}")
    (reference, ref_model), (candidate, cand_model) = (
        _structure(source, known) for source, known in zip((reference, candidate), structures, strict=True))
    check_same_inputs(ref_model.graph, cand_model.graph)
    feeds, specs = make_feeds(ref_model, inputs=inputs, input_shapes=input_shapes, samples=samples, seed=seed,
                              value_range=value_range)
    require_finite(feeds)
    plan = plan_tensors(ref_model.graph, cand_model.graph, check_tensors, per_layer)
    layers = PerLayer.plan(ref_model, cand_model, plan, provider, candidate, reference) if per_layer else None
    observers = [*observers, *([layers] if layers is not None else [])]
    ref_names = plan.names
    feed_names = set(feeds[0]) if feeds else set()
    capture = [n for n in dict.fromkeys(c for o in observers for c in o.capture)
               if n not in set(ref_names) and n not in feed_names]
    ref_session = create_session(reference, provider=provider, extra_outputs=plan.extra + capture, graph=ref_model,
                                 arena=not per_layer)
    cand_session = create_session(candidate, provider=provider, extra_outputs=plan.extra, graph=cand_model,
                                  arena=not per_layer)
    arithmetic = output_arithmetic(ref_model.graph, plan.names)
    trackers: dict[str, WorstCase] = {}
    notes = list(plan.notes)
    finite = _run_samples(feeds, specs, plan, (ref_session, cand_session), capture, observers, trackers, notes,
                          ((atol, rtol), arithmetic))
    _rejudge({n: t for n, t in trackers.items() if n not in plan.per_layer}, feeds, ref_session, cand_session)
    if atol is None:
        rejudge_with_floor(trackers, plan.outputs, feeds, reference, ref_model, ref_session, cand_session, provider)
    report = _report(trackers, plan, specs, len(feeds), seed, provider, notes, cand_model.graph, (atol, rtol))
    if layers is not None:
        report = layers.apply(report, cand_model.graph)
    return nothing_comparable(report, finite)


def _structure(source: ModelSource, known: onnx.ModelProto | None) -> tuple[ModelSource, onnx.ModelProto]:
    """(what to run, its structure). A file holding its weights inline is parsed whole to read the structure;
    that parsed model is then what runs (its weights lent to onnxruntime), not the file read a second time.
    A model in memory is detached here, once: its session and the per-layer checks share its arrays."""
    if known is not None:
        return source, known
    model = load_graph(source)
    if isinstance(source, (str, os.PathLike, bytes, bytearray)) and not has_external_data(model):
        return detach(model) or model, model
    if isinstance(source, onnx.ModelProto):
        return detach(source) or source, model
    return source, model


def _run_reference(session, names: list[str], feed: dict[str, np.ndarray],
                   specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    try:
        return dict(zip(names, session.run(names, feed), strict=True))
    except Exception as exc:  # onnxruntime's pybind11 errors: the inputs do not suit the model
        raise ShapeGuessError(shape_advice(specs, one_line(exc))) from None


def _run_samples(feeds, specs, plan: TensorPlan, sessions, capture: list[str], observers, trackers, notes: list[str],
                 judging) -> int:
    """Run both models on every feed, hand the reference's values to the observers, compare; at most one
    model's worth of tensors alive at a time: per-layer tensors are shared out over the samples (sample i
    compares share i, see ``_shares``). Returns how many finite reference output values were seen."""
    ref_session, cand_session = sessions
    asked, arithmetic = judging
    deciding = [n for n in plan.names if n not in plan.per_layer]
    layers = [n for n in plan.names if n in plan.per_layer]
    shares: list[list[str]] = []
    finite = 0
    for index, feed in enumerate(feeds):
        captured = capture if any(o.capture for o in observers) else []  # [] once each has seen what it needs
        # the first sample exposes every per-layer tensor (the local checks read them), later ones their share
        ref_values = _run_reference(ref_session, deciding + (shares[index] if shares else layers) + captured,
                                    feed, specs)
        finite += finite_count(ref_values, plan.outputs)
        for observer in observers:
            observer.observe({**feed, **ref_values})
        if not shares:
            shares = _shares(layers, ref_values, len(feeds))
            if len(feeds) > 1 and layers:
                notes.append(f"{len(layers)} intermediate tensors compared on one sample each ({len(feeds)} shares "
                             "by size, so that one model's worth of them is alive), the outputs on every sample")
        names = deciding + shares[index]
        for name in set(ref_values) - set(names):
            del ref_values[name]
        cand_names = [n for n in names if n not in plan.missing]
        try:
            cand_arrays = cand_session.run(cand_names, feed) if cand_names else []  # [] would mean "all"
        except Exception as exc:  # onnxruntime's pybind11 errors
            notes.append(f"candidate failed to run: {one_line(exc)}")
            _fail_all(trackers, ref_values, names, plan, f"candidate failed to run: {one_line(exc)}")
            break
        cand_values = dict(zip(cand_names, cand_arrays, strict=True))
        _compare_sample(index, trackers, ref_values, cand_values, names, plan, (asked, arithmetic))
        del ref_values, cand_values, cand_arrays
    return finite


def _shares(names: list[str], values: Mapping[str, np.ndarray], count: int) -> list[list[str]]:
    """*names* in order, cut into *count* runs of about equal bytes (the first sample's values)."""
    sizes = [int(np.asarray(values[n]).nbytes) for n in names]
    shares: list[list[str]] = [[] for _ in range(count)]
    total, held = max(1, sum(sizes)), 0
    for name, size in zip(names, sizes, strict=True):
        shares[min(count - 1, held * count // total)].append(name)
        held += size
    return shares


def _tolerance(name: str, dtype: np.dtype, asked: tuple[float | None, float | None], arithmetic) -> Tolerance:
    return output_tolerance(dtype.name, arithmetic.get(name), *asked)


def _is_float(array: np.ndarray) -> bool:
    return array.dtype.name in DEFAULT_TOLERANCES


def _compare_sample(index: int, trackers: dict[str, WorstCase], ref: dict[str, np.ndarray],
                    cand: dict[str, np.ndarray], names: Sequence[str], plan: TensorPlan, judging) -> None:
    asked, arithmetic = judging
    for name in names:
        r = ref[name]
        tracker = _tracker(trackers, name, r, plan, asked, arithmetic)
        if tracker is None or tracker.note is not None:
            continue
        if name in plan.missing:  # every other name was asked of the candidate, so it is in *cand*
            tracker.note = "missing from the candidate's outputs"
        elif cand[name].shape != r.shape:
            tracker.note = f"shape differs: reference {tuple(r.shape)}, candidate {tuple(cand[name].shape)}"
        elif cand[name].dtype != r.dtype:
            tracker.note = f"dtype differs: reference {r.dtype.name}, candidate {cand[name].dtype.name}"
        else:
            tracker.add(index, compare_arrays(r, cand[name], tracker.tolerance))


def _rejudge(trackers: dict[str, WorstCase], feeds: Sequence[dict[str, np.ndarray]], ref_session,
             cand_session) -> None:
    """Judge again, on channel magnitudes over all samples, the few (sample, tensor) pairs that failed on
    their own sample's magnitudes; this re-runs only those samples (outputs are not kept between samples).
    Only tensors that decide the verdict: per-layer tensors beyond tolerance are mostly drift, which would
    re-run every sample of both models for a pass/drift label."""
    redo: dict[int, list[str]] = {}
    for name, tracker in trackers.items():
        for index in tracker.to_rejudge():
            redo.setdefault(index, []).append(name)
    for index, names in sorted(redo.items()):
        ref_arrays = ref_session.run(names, feeds[index])
        cand_arrays = cand_session.run(names, feeds[index])
        for name, r, c in zip(names, ref_arrays, cand_arrays, strict=True):
            tracker = trackers[name]
            tracker.add(index, compare_arrays(r, c, tracker.tolerance, tracker.channel_magnitude))


def _tracker(trackers: dict[str, WorstCase], name: str, r: np.ndarray, plan: TensorPlan, asked,
             arithmetic) -> WorstCase | None:
    """The worst-case record of tensor *name* (made on first sight); None for a per-layer tensor that is
    not a float activation (shapes and indices are not folded, so not compared)."""
    if name in plan.per_layer and not _is_float(r):
        return None
    if name not in trackers:
        tolerance = _tolerance(name, r.dtype, asked, arithmetic)
        trackers[name] = tracker = WorstCase(name, r.dtype.name, tuple(r.shape), tolerance)
        tracker.basis = describe_basis(r.dtype.name, arithmetic.get(name), asked)
    return trackers[name]


def _fail_all(trackers: dict[str, WorstCase], ref: dict[str, np.ndarray], names: Sequence[str], plan: TensorPlan,
              note: str) -> None:
    for name in names:
        tracker = _tracker(trackers, name, ref[name], plan, (None, None), {})
        if tracker is not None:
            tracker.note = tracker.note or note


def _report(trackers: dict[str, WorstCase], plan: TensorPlan, specs: Sequence[InputSpec], samples: int, seed: int,
            provider: str, notes: list[str], cand_graph: onnx.GraphProto,
            asked: tuple[float | None, float | None]) -> VerifyReport:
    outputs = tuple(trackers[n].result() for n in plan.outputs if n in trackers)
    tensors = tuple(trackers[n].result() for n in plan.extra if n in trackers)
    judged = outputs + tuple(t for t in tensors if t.name in plan.checked)
    compared = [c for c in outputs + tensors if c.note is None]
    return VerifyReport(
        passed=all(c.passed for c in judged),
        outputs=outputs,
        tensors=tensors,
        first_divergence=plan.first_divergence([c.name for c in outputs + tensors if not c.passed], cand_graph),
        inputs=tuple(specs),
        samples=samples,
        seed=seed,
        atol=effective(compared, "atol", asked[0]),
        rtol=effective(compared, "rtol", asked[1]),
        provider=provider,
        notes=tuple(notes),
    )
