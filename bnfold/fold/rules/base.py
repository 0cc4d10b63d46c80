"""What every folding rule is: a name, the ops it anchors at, ``match`` (pure: returns a plan or a
refusal, never edits) and ``rewrite`` (applies a plan). Keeping them apart lets ``inspect`` ask every
rule what it *would* do without changing anything, and lets the report say why a site was left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx

from bnfold.fold.graph import GraphIndex
from bnfold.reasons import Reason


@dataclass(frozen=True)
class Refusal:
    """A rule recognised the pattern but must not fold it."""

    reason: Reason
    detail: str = ""


@dataclass
class Plan:
    """Everything ``rewrite`` needs, with folded values already computed and rounded."""

    anchor: onnx.NodeProto  # the BatchNormalization (or affine Mul/Add/Sub/Div) that disappears
    target: onnx.NodeProto  # the node that absorbs it
    constants: dict[int, tuple[np.ndarray, str]] = field(default_factory=dict)  # target slot -> (value, role)
    precise: dict[int, np.ndarray] = field(default_factory=dict)  # target slot -> float64 value before rounding
    surviving_output: str = ""  # tensor whose value equals the anchor's output after the fold
    removed_tensors: dict[str, str | None] = field(default_factory=dict)  # removed name -> surviving name


class Rule(Protocol):
    name: str
    anchor_ops: frozenset[str]

    def match(self, g: GraphIndex, node: onnx.NodeProto) -> Plan | Refusal | None:
        """A plan, a refusal (pattern present, unsafe to fold), or None (pattern absent)."""

    def rewrite(self, g: GraphIndex, plan: Plan) -> None:
        """Apply *plan* to the graph."""
