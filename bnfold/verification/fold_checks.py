"""Each applied fold proven on the real activation that enters it (what ``optimize`` verifies per fold).

For every fold of the main graph, the candidate's folded node(s) producing the fold's ``output`` are lifted
into one small model (:mod:`bnfold.run.local_eval`), fed with the reference's own values of their inputs,
and compared with the reference's value of ``output``: the original local subgraph (Conv->BN, BN->Conv,
Gemm->BN, a Mul/Add chain ...) evaluated on that same input. The tolerance is that layer's arithmetic
(:mod:`bnfold.verification.bound`), so a fold fails only for its own error, at any depth. A fold whose output
a later fold absorbed (a chain into one Conv) is proven by the site of the node that absorbed both.
Folds inside If/Loop/Scan bodies, and sites that cannot be lifted, are ``checked_by="outputs"``: only the
end-to-end check sees them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from bnfold.fold.driver import AppliedFold
from bnfold.report import ReportMixin
from bnfold.run.lending import detach
from bnfold.verification.bound import LocalJudgement
from bnfold.verification.local_check import LocalCheck
from bnfold.verification.local_sites import Site, SitePlanner, changed_tensors, internal_tensors
from bnfold.verification.ref_path import ReferenceWeights


@dataclass(frozen=True)
class FoldCheck(ReportMixin):
    """How one applied fold was checked, and its result."""

    key: str
    rule: str
    graph: str
    node: str
    output: str
    checked_by: str  # "local" (on its own input) | "outputs" (end to end only)
    passed: bool | None  # None: checked_by "outputs" (the verdict of the outputs applies)
    error_vs_tolerance: float | None = None  # worst |error| / local tolerance (<= 1 passes)
    max_abs_error: float | None = None
    error_vs_magnitude: float | None = None
    tolerance: str = ""
    note: str = ""


class FoldChecker:
    """An observer for :func:`bnfold.verification.verifier.verify`: captures the fold sites' inputs from the
    reference run and judges every fold on them."""

    def __init__(self, ref_graph: onnx.GraphProto, candidate: onnx.ModelProto, applied: Sequence[AppliedFold],
                 provider: str = "cpu", external_folder: str | None = None,
                 ref_weights: ReferenceWeights | None = None, arrays: Mapping[str, np.ndarray] | None = None) -> None:
        """*arrays*: the candidate's weights as lent to its session (shared by the local check, not read again)."""
        self.applied = list(applied)
        self._seen = False
        main = [f for f in self.applied if f.graph == "main"]
        targets = {f.target for f in main}
        rewritten = {o for n in candidate.graph.node if _node_name(n) in targets for o in n.output if o}
        rewritten |= changed_tensors(ref_graph, candidate.graph, lambda _: True)
        kept = {f.output for f in main}  # a fold's output keeps its value: it may be fed
        planner = SitePlanner(ref_graph, candidate.graph, internal_tensors(candidate.graph, rewritten) - kept)
        self.site_of: dict[str, str] = {}  # fold key -> the output its site proves
        sites: dict[str, Site] = {}
        for fold in self.applied:
            if fold.graph != "main":
                continue
            site = sites.get(fold.output) or planner.site(fold.output)
            if site is None:
                continue
            sites[fold.output] = site
            self.site_of[fold.key] = fold.output
        by_target = {_node_name(n): s.output for s in sites.values() for n in s.nodes}
        for fold in self.applied:  # absorbed by a later fold into the same node: proven by its site
            if fold.graph == "main" and fold.key not in self.site_of and fold.target in by_target:
                self.site_of[fold.key] = by_target[fold.target]
        self.local = LocalCheck(list(sites.values()), candidate, provider, external_folder,
                                (ref_graph, ref_weights) if ref_weights is not None else None, arrays)

    @property
    def capture(self) -> list[str]:
        """The reference tensors the next sample must expose: none once the first sample was judged."""
        return [] if self._seen else self.local.capture

    def observe(self, values: Mapping[str, np.ndarray]) -> None:
        """Each fold is judged on the first sample's activations (a fold's error does not depend on which
        input reaches it, and the local model costs about two inferences); the outputs on every sample."""
        if not self._seen:
            self._seen = True
            self.local.observe(values)

    def results(self) -> list[FoldCheck]:
        verdicts = self.local.verdicts()
        return [self._result(fold, verdicts) for fold in self.applied]

    def _result(self, fold: AppliedFold, verdicts: Mapping[str, LocalJudgement | str]) -> FoldCheck:
        common: dict = dict(key=fold.key, rule=fold.rule, graph=fold.graph, node=fold.node, output=fold.output)
        site = self.site_of.get(fold.key)
        verdict = verdicts.get(site) if site is not None else None
        if not isinstance(verdict, LocalJudgement):
            why = ("inside a subgraph" if fold.graph != "main" else
                   verdict if isinstance(verdict, str) else "its node(s) cannot be recomputed alone")
            return FoldCheck(**common, checked_by="outputs", passed=None, note=why)
        magnitude = verdict.magnitude
        return FoldCheck(**common, checked_by="local", passed=verdict.passed,
                         error_vs_tolerance=round(verdict.worst_ratio, 6), max_abs_error=verdict.max_abs_error,
                         error_vs_magnitude=verdict.max_abs_error / magnitude if magnitude > 0 else 0.0,
                         tolerance=verdict.tolerance, note="" if site == fold.output else f"proven at {site!r}")


def _node_name(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else "")


def folds_to_revert(report, checks: Sequence[FoldCheck]) -> set[str]:
    """The folds that failed their own local check. If the outputs fail while every local check passes: the
    folds only the outputs could check (inside subgraphs, or not liftable), or, where there are none (the
    outputs' tolerance was set tighter than rounding, e.g. atol=0), every fold: the original is what passes."""
    failing = {c.key for c in checks if c.checked_by == "local" and not c.passed}
    if failing or report.passed or report.reason:
        return failing
    return {c.key for c in checks if c.checked_by == "outputs"} or {c.key for c in checks}


def failure_message(report, checks: Sequence[FoldCheck]) -> str | None:
    """Why verification failed (the outputs, else the folds that failed on their own input); None: passed."""
    local = [c for c in checks if c.checked_by == "local" and not c.passed]
    if not report.passed:
        return report.summary()
    if not local:
        return None
    return "; ".join(f"fold at {c.node!r} differs on its own input: {c.error_vs_tolerance:.3g}x its tolerance "
                     f"({c.tolerance})" for c in local[:3])


def verify_folds(reference, candidate_source, candidate: onnx.ModelProto, applied: Sequence[AppliedFold],
                 check: dict, external_folder: str | None) -> tuple[object, tuple[FoldCheck, ...]]:
    """Run :func:`~bnfold.verification.verifier.verify` of *candidate* against *reference* (``.source``,
    ``.structure``) with every fold checked on its own input; (verify report, one FoldCheck per fold).

    An in-memory candidate is detached once here: its session and the fold checks share one copy of its weights.
    """
    from bnfold.verification.verifier import verify

    detached = detach(candidate) if candidate_source is candidate else None
    checker = FoldChecker(reference.structure.graph, candidate, applied, check.get("provider", "cpu"),
                          external_folder, ReferenceWeights(reference.source, reference.structure),
                          detached.arrays if detached is not None else None)
    report = verify(reference.source, detached or candidate_source, structures=(reference.structure, candidate),
                    observers=[checker], **check)
    return report, tuple(checker.results())
