"""``verify --per-layer``: where does a divergence start? Each compared tensor's producing node in the
candidate is recomputed on the reference's values of its inputs (:mod:`bnfold.verification.local_check`).

Verdicts per tensor: ``fail`` when that recomputation disagrees with the reference beyond the node's own
arithmetic (the divergence starts here; the verdict fails, exit 1); ``drift`` when the recomputation agrees
but the candidate's value, computed from its own upstream values, is beyond the end-to-end tolerance (error
accumulated upstream); ``pass`` otherwise. A node that cannot be lifted alone (it reads a tensor the
reference doesn't make, or has subgraphs) is judged end to end only: ``pass`` or ``drift``. The nodes
are recomputed on the first sample.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import onnx

from bnfold.run.lending import DetachedModel
from bnfold.verification.bound import LocalJudgement
from bnfold.verification.local_check import LocalCheck
from bnfold.verification.local_sites import SitePlanner, changed_tensors, internal_tensors, taken_over
from bnfold.verification.ref_path import ReferenceWeights
from bnfold.verification.tensor_plan import TensorPlan
from bnfold.verification.verify_report import VerifyReport


class PerLayer:
    def __init__(self, check: LocalCheck, plan: TensorPlan) -> None:
        self.check, self.tensor_plan = check, plan
        self._seen = False

    @classmethod
    def plan(cls, ref_model: onnx.ModelProto, cand_model: onnx.ModelProto, plan: TensorPlan, provider: str,
             candidate_source=None, reference_source=None) -> PerLayer:
        folder = None
        if isinstance(candidate_source, (str, os.PathLike)):
            folder = os.path.dirname(os.path.abspath(os.fspath(candidate_source)))
        weights = ReferenceWeights(reference_source if reference_source is not None else ref_model, ref_model)
        cand_weights = ReferenceWeights(candidate_source if candidate_source is not None else cand_model, cand_model)
        changed = changed_tensors(ref_model.graph, cand_model.graph,
                                  lambda n: _same(weights.get(n), cand_weights.get(n)))
        # outputs of rewritten nodes that may hold another value under the reference's name: neither fed with
        # the reference's value nor compared with it
        unsure = internal_tensors(cand_model.graph, changed) - taken_over(ref_model.graph, cand_model.graph, changed)
        internal = unsure - plan.checked
        if internal:
            plan.extra[:] = [n for n in plan.extra if n not in internal]
            plan.notes.append(f"{len(internal)} tensor(s) a fold gave another value under the same name (inside "
                              "a rewritten node pair) not compared")
        planner = SitePlanner(ref_model.graph, cand_model.graph, unsure)
        names = [n for n in plan.outputs if n not in plan.missing] + list(plan.extra)
        sites = [s for s in (planner.site(n) for n in names) if s is not None]
        arrays = candidate_source.arrays if isinstance(candidate_source, DetachedModel) else None
        return cls(LocalCheck(sites, cand_model, provider, folder, (ref_model.graph, weights), arrays), plan)

    @property
    def capture(self) -> list[str]:
        return self.check.capture

    def observe(self, values: Mapping[str, np.ndarray]) -> None:
        """Localising needs one sample: every node is judged on the first one (the outputs, end to end, on
        all), which keeps ``--per-layer`` within 3x the cost of a plain verify."""
        if not self._seen:
            self._seen = True
            self.check.observe(values)

    def apply(self, report: VerifyReport, cand_graph: onnx.GraphProto) -> VerifyReport:
        """*report* with per-tensor verdicts; fails where a tensor's own node disagrees."""
        local = self.check.verdicts()

        def judged(c):
            j = local.get(c.name)
            if not isinstance(j, LocalJudgement):
                return replace(c, verdict="pass" if c.passed else "drift")
            verdict = "fail" if not j.passed else ("pass" if c.passed else "drift")
            return replace(c, verdict=verdict, local_error_vs_tolerance=round(j.worst_ratio, 6),
                           tolerance=f"{c.tolerance}; {j.tolerance}" if c.tolerance else j.tolerance)

        outputs = tuple(judged(c) for c in report.outputs)
        tensors = tuple(judged(c) for c in report.tensors)
        failing = [c.name for c in outputs + tensors if c.verdict == "fail"]
        if not failing:  # drift alone decides nothing: a passing verdict names no divergence
            first = report.first_divergence if not report.passed else None
            notes = report.notes + _unlocalised(tensors + outputs, local)  # tensors in node order first
            return replace(report, outputs=outputs, tensors=tensors, first_divergence=first, notes=notes)
        return replace(report, outputs=outputs, tensors=tensors, passed=False,
                       first_divergence=self.tensor_plan.first_divergence(failing, cand_graph))


def _unlocalised(comparisons, local: Mapping) -> tuple[str, ...]:
    """A note naming the tensors beyond tolerance whose node could not be recomputed alone: their error may
    start there, which only the end-to-end figures can show."""
    unjudged = [c.name for c in comparisons if c.verdict == "drift" and not isinstance(local.get(c.name),
                                                                                         LocalJudgement)]
    if not unjudged:
        return ()
    return (f"{len(unjudged)} tensor(s) beyond tolerance whose node could not be recomputed alone (first: "
            f"{unjudged[0]!r}) were judged end to end only: a divergence may start there",)


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
