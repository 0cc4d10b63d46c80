"""``bnfold.inspect``: every BatchNormalization (and affine Mul/Add/Sub/Div site) of a model, and whether it folds.

The answer is not predicted by a second set of rules: ``inspect`` runs the real fold on a copy
(``optimize`` with verification and provenance off) and maps what it applied and refused back onto the
nodes of the original model, so ``inspect`` and ``optimize`` cannot disagree. The one thing it cannot
foresee is verification: a fold that ``optimize`` later reverts because its tensor diverged in onnxruntime
is reported here as foldable (``optimize`` then reports ``reverted_by_verification``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import onnx

from bnfold.fold.driver import BN, AppliedFold, RefusedSite, graph_indexes, site_key
from bnfold.fold.graph import GraphIndex
from bnfold.reasons import Reason
from bnfold.report import SCHEMA_VERSION, ReportMixin

AFFINE_OPS = frozenset({"Mul", "Add", "Sub", "Div"})


@dataclass(frozen=True)
class BatchNormSite:
    """One BatchNormalization node of the original model. ``reason`` is None exactly when it folds."""

    name: str  # node name, or its first output where the node is unnamed (as optimize's report names it)
    graph: str  # "main", or "main/<node>.<attribute>" for a subgraph
    producer_op: str | None  # op producing its input; None for a graph input or initializer
    channels: int | None  # from the scale's shape, when the scale's shape is known
    foldable: bool
    rule: str | None  # the rule that folds it; None when it stays
    reason: Reason | None
    sentence: str
    detail: str


@dataclass(frozen=True)
class AffineSite:
    """A Mul/Add/Sub/Div by a constant: folded by a rule (affine_chain, matmul_affine, concat_bn, add_bn,
    affine_conv, bn_gemm), refused by one, or, for a per-channel constant no rule recognised, left in place
    as ``no_foldable_neighbour`` (so every decomposed BN that stays is listed, as a BatchNormalization is)."""

    name: str
    graph: str
    op_type: str
    producer_op: str | None
    foldable: bool
    rule: str | None
    reason: Reason | None
    sentence: str
    detail: str


@dataclass(frozen=True)
class InspectTotals:
    batchnorms: int
    foldable: int
    refused: int
    by_reason: dict[str, int]  # reason value -> BatchNormalizations left for it, most frequent first
    affine_foldable: int
    affine_refused: int


@dataclass(frozen=True)
class InspectReport(ReportMixin):
    """What ``optimize`` would fold, site by site. JSON via ``to_json()``."""

    REPORT_KIND = "inspect"  # the report contract (bnfold/report.py)

    batchnorms: tuple[BatchNormSite, ...]
    affine: tuple[AffineSite, ...]
    totals: InspectTotals
    schema_version: int = SCHEMA_VERSION
    model: str | None = None  # the path inspected, or None for an in-memory model
    rules: tuple[str, ...] = ()  # the rules that were enabled


def inspect(model_or_path: onnx.ModelProto | str | os.PathLike, *, rules: Sequence[str] | None = None,
            skip_rules: Sequence[str] | None = None, freeze_initializers: bool = False) -> InspectReport:
    """Say, for every BatchNormalization in every graph, whether ``optimize`` folds it (and by which rule)
    or why not; likewise for the affine Mul/Add/Sub/Div sites. The model is never modified.
    ``freeze_initializers``: answer as ``optimize(..., freeze_initializers=True)`` would fold.

    Raises what ``bnfold.io.load_model`` raises for an unreadable path, and UsageError for unknown rules.
    """
    from bnfold.optimizer import optimize

    if isinstance(model_or_path, onnx.ModelProto):
        original, label = model_or_path, None
    else:  # the structure only: optimize reads the weights itself (lazily where they are external data)
        from bnfold.io.model_file import load_model

        original, label = load_model(model_or_path, load_external_data=False), os.fspath(model_or_path)
        model_or_path = label
    report = optimize(model_or_path, rules=rules, skip_rules=skip_rules, verify=False, metadata=False,
                      freeze_initializers=freeze_initializers).report
    applied = {fold.key: fold for fold in report.applied}
    refused = {site.key: site for site in report.refused}
    batchnorms: list[BatchNormSite] = []
    affine: list[AffineSite] = []
    for g, node in _candidate_nodes(original):
        key = site_key(g.label, node)
        if node.op_type == BN:
            batchnorms.append(_batchnorm_site(g, node, applied.get(key), refused.get(key)))
        elif key in applied or key in refused:
            affine.append(_affine_site(g, node, applied.get(key), refused.get(key)))
    return InspectReport(batchnorms=tuple(batchnorms), affine=tuple(affine), totals=_totals(batchnorms, affine),
                         model=label, rules=report.rules)


def _candidate_nodes(model: onnx.ModelProto) -> Iterator[tuple[GraphIndex, onnx.NodeProto]]:
    for g in graph_indexes(model):
        for node in g.graph.node:
            if node.op_type == BN or node.op_type in AFFINE_OPS:
                yield g, node


def _node_name(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else "")


def _producer_op(g: GraphIndex, name: str) -> str | None:
    """Op of the node producing *name*, looking through enclosing graphs for outer-scope names."""
    scope: GraphIndex | None = g
    while scope is not None:
        if name in scope.inputs or name in scope.initializers:
            return None
        producer = scope.producer.get(name)
        if producer is not None:
            return producer.op_type
        scope = scope.parent
    return None


def _channels(g: GraphIndex, node: onnx.NodeProto) -> int | None:
    if len(node.input) < 2 or not node.input[1]:
        return None
    initializer = g.initializers.get(node.input[1])  # its declared shape: no need to read (external) data
    if initializer is not None:
        return int(initializer.dims[0]) if initializer.dims else None
    scale = g.constant(node.input[1])
    return int(scale.value.shape[0]) if scale.value is not None and scale.value.ndim else None


def _verdict(applied: AppliedFold | None, refused: RefusedSite | None) -> dict:
    """The fields shared by both kinds of site: foldable, rule, reason, sentence, detail."""
    if applied is not None:
        return dict(foldable=True, rule=applied.rule, reason=None,
                    sentence=f"folds into {applied.target_op} {applied.target!r}",
                    detail=f"tensor {applied.output!r} keeps its value")
    if refused is not None:
        detail = refused.detail
        if len(refused.attempts) > 1:  # one attempt is the reason itself; several are worth listing
            detail += "; tried " + ", ".join(f"{rule}: {why}" for rule, why in refused.attempts)
        return dict(foldable=False, rule=None, reason=refused.reason, sentence=refused.sentence, detail=detail)
    # Only a node the driver never visits lands here (e.g. one whose output another node also produces).
    reason = Reason.NO_FOLDABLE_NEIGHBOUR
    return dict(foldable=False, rule=None, reason=reason, sentence=reason.sentence,
                detail="not visited by the fold driver (its output name is produced more than once?)")


def _batchnorm_site(g: GraphIndex, node: onnx.NodeProto, applied: AppliedFold | None,
                    refused: RefusedSite | None) -> BatchNormSite:
    producer = _producer_op(g, node.input[0]) if node.input else None
    return BatchNormSite(name=_node_name(node), graph=g.label, producer_op=producer, channels=_channels(g, node),
                         **_verdict(applied, refused))


def _affine_site(g: GraphIndex, node: onnx.NodeProto, applied: AppliedFold | None,
                 refused: RefusedSite | None) -> AffineSite:
    variable = [name for name in node.input if name and not g.constant(name).ok]
    producer = _producer_op(g, variable[0]) if variable else None
    return AffineSite(name=_node_name(node), graph=g.label, op_type=node.op_type, producer_op=producer,
                      **_verdict(applied, refused))


def _totals(batchnorms: Sequence[BatchNormSite], affine: Sequence[AffineSite]) -> InspectTotals:
    reasons = Counter(site.reason.value for site in batchnorms if site.reason is not None)
    foldable = sum(site.foldable for site in batchnorms)
    affine_foldable = sum(site.foldable for site in affine)
    return InspectTotals(batchnorms=len(batchnorms), foldable=foldable, refused=len(batchnorms) - foldable,
                         by_reason=dict(reasons.most_common()), affine_foldable=affine_foldable,
                         affine_refused=len(affine) - affine_foldable)
