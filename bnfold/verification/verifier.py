"""Does the candidate compute what the reference computes? Run both in onnxruntime and compare.

Both models run with onnxruntime's graph optimisations DISABLED, on the same feeds: otherwise ORT
would fuse BatchNormalization into the reference at session time and the check would compare ORT's
fold against ours. Outputs are matched by name (one missing from the candidate fails). Two kinds of
intermediate tensors can be added, both made extra graph outputs on both sides:

- ``check_tensors`` (names produced in both graphs) count for the verdict. The optimizer passes each
  fold's output, so a bad fold is named exactly even when the outputs barely move;
- ``per_layer`` adds every data-dependent float tensor the two graphs share. These only localise:
  ``first_divergence`` names the first failing tensor in the candidate's node order (ONNX order is
  topological) and the node producing it. Same name must mean same value: a folder keeps the
  BatchNormalization's output name for the fused node, as bnfold and onnxruntime do.

Tolerances, by the reference tensor's dtype; the rule (:mod:`bnfold.verification.compare`) is, per element,
``|c - r| <= atol * max(1, max|r| of its channel) + rtol * |r|``. ``atol=`` / ``rtol=`` override
them for float tensors; integer and bool tensors must match exactly.

=========  ======  ======
dtype      atol    rtol
=========  ======  ======
float64    1e-9    1e-10
float32    1e-4    1e-5
float16    1e-2    1e-3
bfloat16   5e-2    5e-3
=========  ======  ======

Why float32 atol = 1e-4 (measured on the seven real models of the test corpus, 2 to 49 folds each,
each verified against onnxruntime's own Conv+BatchNormalization fusion, standard-normal inputs):

- correct folds: the worst channel-scaled error is 8e-6 at any output, 1.4e-5 at any fold output
  (what ``check_tensors`` judges) and 2.4e-5 at any intermediate tensor; bnfold's own folds (up to
  62 per model, Mul/Add chains included) reach 2.2e-5 at a fold output. Cosine is reported, not
  judged: a detection map that is ~4e-6 everywhere on random input has cosine 0.97 at an absolute
  error of 1.5e-7, which is why atol turns absolute below magnitude 1;
- a real fault, one output channel of one convolution scaled by 1.01 (weights and bias), moves the
  fold's own tensor by at least 3e-4 (every one of 317 convolutions tried is caught there), and
  the outputs by more than 1e-4 in 185 of them; the rest are diluted below float rounding
  downstream (a 1e-6 change at the output cannot be told from rounding by any tolerance).

So 1e-4 sits ~4x above the worst rounding of a correct fold and ~3x below the smallest fault at the
fold itself; rtol stays a tenth of atol so the element-wise term only widens the band at a channel's
largest values. Calibrated for in-distribution inputs: uniform(-5, 5) pixels drive EfficientNet-B0
activations to 1e5, where sigmoid gates amplify rounding until even a correct fold differs by 4e-2;
feed real data (``inputs=``) for such models. float16 rounds by ~5e-4 per operation and a fold computed
in float64 then rounded once still moves outputs by ~1e-3; 1e-2 leaves headroom, at the price that a
1 % single-channel fault may pass at the outputs (``check_tensors`` still sees it at the fold).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from bnfold.errors import ShapeGuessError, UsageError
from bnfold.io.external_data import has_external_data
from bnfold.report import SCHEMA_VERSION, ReportMixin
from bnfold.run.inputs import InputSpec, make_feeds
from bnfold.run.sessions import ModelSource, create_session, load_graph, one_line
from bnfold.verification.compare import TensorComparison, Tolerance, WorstCase, compare_arrays
from bnfold.verification.tensor_plan import TensorPlan, check_same_inputs, plan_tensors

DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(atol=1e-9, rtol=1e-10),
    "float32": Tolerance(atol=1e-4, rtol=1e-5),
    "float16": Tolerance(atol=1e-2, rtol=1e-3),
    "bfloat16": Tolerance(atol=5e-2, rtol=5e-3),
}
EXACT = Tolerance(atol=0.0, rtol=0.0)


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
) -> VerifyReport:
    """Run *reference* and *candidate* on the same feeds and compare them (see the module docstring).

    *structures*: the two models' graphs where the caller holds them already (weights not needed), so a
    big model's bytes are not parsed again just to read names and shapes.

    Raises UsageError when the two models cannot be compared (different inputs, unknown
    check_tensors), ShapeGuessError (an InputSpecError) when the reference cannot run on the chosen inputs, and
    ModelLoadError when onnxruntime rejects a model. A mismatch is not an exception: it is a
    report with ``passed=False``.
    """
    for value, what in ((atol, "atol"), (rtol, "rtol")):
        if value is not None and not value >= 0:
            raise UsageError(f"{what} must be >= 0, got {value}")
    (reference, ref_model), (candidate, cand_model) = (
        _structure(source, known) for source, known in zip((reference, candidate), structures, strict=True))
    check_same_inputs(ref_model.graph, cand_model.graph)
    feeds, specs = make_feeds(ref_model, inputs=inputs, input_shapes=input_shapes, samples=samples, seed=seed,
                              value_range=value_range)
    plan = plan_tensors(ref_model.graph, cand_model.graph, check_tensors, per_layer)
    ref_session = create_session(reference, provider=provider, extra_outputs=plan.extra, graph=ref_model)
    cand_session = create_session(candidate, provider=provider, extra_outputs=plan.extra, graph=cand_model)
    ref_names = plan.names
    cand_names = [n for n in plan.outputs if n not in plan.missing] + plan.extra
    trackers: dict[str, WorstCase] = {}
    notes = list(plan.notes)
    for index, feed in enumerate(feeds):
        ref_values = _run_reference(ref_session, ref_names, feed, specs)
        try:
            cand_arrays = cand_session.run(cand_names, feed) if cand_names else []  # [] would mean "all"
        except Exception as exc:  # onnxruntime's pybind11 errors
            notes.append(f"candidate failed to run: {one_line(exc)}")
            _fail_all(trackers, ref_values, plan, f"candidate failed to run: {one_line(exc)}")
            break
        cand_values = dict(zip(cand_names, cand_arrays, strict=True))
        _compare_sample(index, trackers, ref_values, cand_values, plan, atol, rtol)
    _rejudge(trackers, feeds, ref_session, cand_session)
    return _report(trackers, plan, specs, len(feeds), seed, provider, notes, cand_model.graph, (atol, rtol))


def _structure(source: ModelSource, known: onnx.ModelProto | None) -> tuple[ModelSource, onnx.ModelProto]:
    """(what to run, its structure). A file holding its weights inline is parsed whole to read the structure;
    that parsed model is then what runs (its weights lent to onnxruntime), not the file read a second time."""
    if known is not None:
        return source, known
    model = load_graph(source)
    if isinstance(source, (str, os.PathLike, bytes, bytearray)) and not has_external_data(model):
        return model, model
    return source, model


def _run_reference(session, names: list[str], feed: dict[str, np.ndarray],
                   specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    try:
        return dict(zip(names, session.run(names, feed), strict=True))
    except Exception as exc:  # onnxruntime's pybind11 errors: the inputs do not suit the model
        raise ShapeGuessError(_shape_advice(specs, one_line(exc))) from None


def _shape_advice(specs: Sequence[InputSpec], ort_message: str) -> str:
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


def _tolerance(dtype: np.dtype, atol: float | None, rtol: float | None) -> Tolerance:
    default = DEFAULT_TOLERANCES.get(dtype.name)
    if default is None:
        return EXACT
    return Tolerance(atol=default.atol if atol is None else atol, rtol=default.rtol if rtol is None else rtol)


def _is_float(array: np.ndarray) -> bool:
    return array.dtype.name in DEFAULT_TOLERANCES


def _compare_sample(index: int, trackers: dict[str, WorstCase], ref: dict[str, np.ndarray],
                    cand: dict[str, np.ndarray], plan: TensorPlan, atol: float | None, rtol: float | None) -> None:
    for name in plan.names:
        r = ref[name]
        tracker = _tracker(trackers, name, r, plan, atol, rtol)
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
    their own sample's magnitudes; this re-runs only those samples (outputs are not kept between samples)."""
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


def _tracker(trackers: dict[str, WorstCase], name: str, r: np.ndarray, plan: TensorPlan, atol: float | None,
             rtol: float | None) -> WorstCase | None:
    """The worst-case record of tensor *name* (made on first sight); None for a per-layer tensor that is
    not a float activation (shapes and indices are not folded, so not compared)."""
    if name in plan.per_layer and not _is_float(r):
        return None
    if name not in trackers:
        trackers[name] = WorstCase(name, r.dtype.name, tuple(r.shape), _tolerance(r.dtype, atol, rtol))
    return trackers[name]


def _fail_all(trackers: dict[str, WorstCase], ref: dict[str, np.ndarray], plan: TensorPlan, note: str) -> None:
    for name in plan.names:
        tracker = _tracker(trackers, name, ref[name], plan, None, None)
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
        atol=_effective(compared, "atol", asked[0]),
        rtol=_effective(compared, "rtol", asked[1]),
        provider=provider,
        notes=tuple(notes),
    )


def _effective(comparisons: Sequence[TensorComparison], field: str, asked: float | None) -> float | dict[str, float]:
    """One number when one value applied to every compared tensor, else {dtype: value}."""
    by_dtype = {c.dtype: getattr(c, field) for c in comparisons}
    values = set(by_dtype.values())
    if len(values) == 1:
        return values.pop()
    if not values:  # nothing could be compared (the candidate did not run)
        return asked if asked is not None else getattr(DEFAULT_TOLERANCES["float32"], field)
    return by_dtype
