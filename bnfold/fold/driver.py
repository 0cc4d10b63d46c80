"""The fold driver: visit every graph (subgraphs included), try the rules in registry order at each
anchor node, rewrite the first plan, and repeat until a pass changes nothing (with a cap).

It records every applied fold and, from the last (quiet) pass, every site left in place with its
reason. ``exclude`` names sites (``graph:anchor-output``) that must not fold: verification uses it
to revert exactly the folds that failed. ``fold_and_clean`` is what ``optimize`` runs: the driver between
two cleanups, with the initializers an IR-3 model lists as inputs folded as the constants they are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from bnfold.fold import initializer_inputs
from bnfold.fold.cleanup import clean_graph
from bnfold.fold.constant_eval import DEFAULT_DOMAINS
from bnfold.fold.graph import GraphIndex, NameAllocator, subgraphs
from bnfold.fold.ranks import RankOracle
from bnfold.fold.rules import Plan, Refusal, Rule
from bnfold.fold.rules._sites import leftover_affine
from bnfold.reasons import Reason

if TYPE_CHECKING:
    from bnfold.io.lazy_data import DataFolder

MAX_PASSES = 16
BN = "BatchNormalization"


@dataclass(frozen=True)
class AppliedFold:
    rule: str
    graph: str
    node: str  # the removed anchor (BatchNormalization or Mul/Add/Sub/Div)
    op_type: str
    target: str  # the node that absorbed it
    target_op: str
    output: str  # tensor whose value is unchanged by the fold (checked by verification)
    key: str


@dataclass(frozen=True)
class RefusedSite:
    graph: str
    node: str
    op_type: str
    reason: Reason
    sentence: str
    detail: str
    rule: str | None
    attempts: tuple[tuple[str, str], ...] = ()
    key: str = ""


@dataclass
class FoldOutcome:
    applied: list[AppliedFold] = field(default_factory=list)
    refused: list[RefusedSite] = field(default_factory=list)
    tensor_map: dict[str, str | None] = field(default_factory=dict)
    _mapped_to: dict[str, list[str]] = field(default_factory=dict, repr=False)  # survivor -> removed names
    passes: int = 0
    cleaned: bool = False  # cleanup removed dead constants/initializers/value_info
    removed_inputs: list[str] = field(default_factory=list)  # initializer-backed inputs frozen (taken out)


def ai_onnx_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return entry.version
    return 1


def site_key(label: str, node: onnx.NodeProto) -> str:
    """A site's stable name (``graph:first-output``): used to exclude (revert) folds and by inspect."""
    return f"{label}:{node.output[0] if node.output else node.name}"


def graph_indexes(model: onnx.ModelProto, data: DataFolder | None = None) -> Iterator[GraphIndex]:
    """Indexes for the main graph and every subgraph, parents before children. ``data``: where a lazily
    loaded model's external initializers live (see ``bnfold.io.lazy_data``)."""
    names, ranks, opset = NameAllocator(model), RankOracle(model), ai_onnx_opset(model)
    precise: dict[str, np.ndarray] = {}
    pending = deque([GraphIndex(model.graph, label="main", opset=opset, names=names, ranks=ranks,
                                precise=precise, data=data)])
    while pending:
        index = pending.popleft()
        yield index
        for node in index.graph.node:
            for attr_name, sub in subgraphs(node):
                label = f"{index.label}/{node.name or node.op_type}.{attr_name}"
                pending.append(GraphIndex(sub, label=label, opset=opset, names=names, parent=index, ranks=ranks,
                                          precise=precise, data=data))


def fold_model(model: onnx.ModelProto, rules: Sequence[Rule], *, disabled: Sequence[Rule] = (),
               exclude: frozenset[str] = frozenset(), data: DataFolder | None = None) -> FoldOutcome:
    """Fold *model* in place to a fixed point; return what was done and what was left, and why."""
    outcome = FoldOutcome()
    for index in graph_indexes(model, data):
        _fold_graph(index, rules, disabled, exclude, outcome)
    return outcome


def fold_and_clean(model: onnx.ModelProto, rules: Sequence[Rule], *, disabled: Sequence[Rule] = (),
                   exclude: frozenset[str] = frozenset(), data: DataFolder | None = None,
                   freeze_initializers: bool = False) -> FoldOutcome:
    """``fold_model`` between two cleanups (a dead reader must not block a fold it would later vanish from),
    with initializers listed as graph inputs treated as ``initializer_inputs`` explains: constants in IR 3
    (the model stays valid IR 3), overridable from IR 4 on unless *freeze_initializers* takes them out."""
    held = initializer_inputs.hold(model, freeze=freeze_initializers)
    cleaned_first = clean_graph(model.graph)
    outcome = fold_model(model, rules, disabled=disabled, exclude=exclude, data=data)
    outcome.cleaned = clean_graph(model.graph) or cleaned_first
    outcome.removed_inputs = initializer_inputs.release(model, held)
    return outcome


def _fold_graph(g: GraphIndex, rules, disabled, exclude, outcome: FoldOutcome) -> None:
    unfolded: list[tuple[onnx.NodeProto, str, list[tuple[str, Refusal]]]] = []
    for _ in range(MAX_PASSES):
        outcome.passes += 1
        unfolded = []
        changed = False
        for node in list(g.graph.node):
            if not _still_in_graph(g, node):
                continue
            key = site_key(g.label, node)
            rule, result = _first_plan(g, node, rules, exclude, key)
            if isinstance(result, Plan):
                assert rule is not None  # a plan always comes with its rule
                _apply(g, rule, result, key, outcome)
                changed = True
            else:
                unfolded.append((node, key, result))
        g.flush()
        if not changed:
            break
    # Why the last pass left what it left. Disabled rules are asked only now, once: a fold they would make
    # is reported, never applied, so asking on every pass would only repeat their work.
    for node, key, attempts in unfolded:
        if not _still_in_graph(g, node):
            continue
        for rule in disabled:
            if node.op_type in rule.anchor_ops and isinstance(rule.match(g, node), Plan):
                attempts.append((rule.name, Refusal(Reason.RULE_DISABLED, f"rule {rule.name} is disabled")))
        site = _refusal(g, node, attempts, key)
        if site is not None:
            outcome.refused.append(site)


def _still_in_graph(g: GraphIndex, node: onnx.NodeProto) -> bool:
    return any(out and g.producer.get(out) is node for out in node.output)


def _first_plan(g, node, rules, exclude, key) -> tuple[Rule | None, Plan | list[tuple[str, Refusal]]]:
    """The first enabled rule's plan for *node*, or the refusals of every rule that was asked."""
    attempts: list[tuple[str, Refusal]] = []
    for rule in rules:
        if node.op_type not in rule.anchor_ops:
            continue
        result = rule.match(g, node)
        if isinstance(result, Plan):
            if key not in exclude:
                return rule, result
            result = Refusal(Reason.REVERTED_BY_VERIFICATION, "reverted after failing verification")
        if isinstance(result, Refusal):
            attempts.append((rule.name, result))
    return None, attempts


def _refusal(g: GraphIndex, node, attempts, key) -> RefusedSite | None:
    if not attempts:
        if node.op_type != BN:  # an ordinary Add/Mul, or a per-channel affine site no rule recognised
            leftover = leftover_affine(g, node)
            return None if leftover is None else _site(g, node, leftover, None, (), key)
        producer = g.producer.get(node.input[0])
        readers = ", ".join(sorted({n.op_type for n in g.readers(node.output[0])})) or "none"
        detail = f"producer {producer.op_type if producer else 'graph input'}, readers {readers}"
        return _site(g, node, Refusal(Reason.NO_FOLDABLE_NEIGHBOUR, detail), None, (), key)
    priority = (Reason.REVERTED_BY_VERIFICATION, Reason.RULE_DISABLED)
    chosen = next((a for p in priority for a in attempts if a[1].reason is p), attempts[0])
    listed = tuple((name, refusal.reason.value) for name, refusal in attempts)
    return _site(g, node, chosen[1], chosen[0], listed, key)


def _site(g, node, refusal: Refusal, rule, attempts, key) -> RefusedSite:
    return RefusedSite(graph=g.label, node=node.name or node.output[0], op_type=node.op_type,
                       reason=refusal.reason, sentence=refusal.reason.sentence, detail=refusal.detail,
                       rule=rule, attempts=attempts, key=key)


def _apply(g: GraphIndex, rule: Rule, plan: Plan, key: str, outcome: FoldOutcome) -> None:
    anchor, target = plan.anchor, plan.target
    record = AppliedFold(rule=rule.name, graph=g.label, node=anchor.name or anchor.output[0],
                         op_type=anchor.op_type, target=target.name or target.output[0],
                         target_op=target.op_type, output=plan.surviving_output, key=key)
    with g.editing(anchor, target):
        rule.rewrite(g, plan)
    outcome.applied.append(record)
    for removed, surviving in plan.removed_tensors.items():
        chained = outcome._mapped_to.pop(removed, [])  # names that mapped to the tensor now removed
        for name in (*chained, removed):
            outcome.tensor_map[name] = surviving
        if surviving is not None:
            outcome._mapped_to.setdefault(surviving, []).extend((*chained, removed))
