"""Provenance in the output's metadata_props: bnfold version, folds applied, verification summary.

A model that bnfold leaves unchanged gets no entries and keeps its bytes, so re-runs stay
byte-identical.
"""

from __future__ import annotations

from collections import Counter

import onnx

from bnfold import __version__

PREFIX = "bnfold."


def strip_provenance(model: onnx.ModelProto) -> None:
    """Drop entries a previous bnfold run left, before this run's are added."""
    kept = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    if len(kept) != len(model.metadata_props):
        del model.metadata_props[:]
        model.metadata_props.extend(kept)


def provenance_entries(report) -> list[tuple[str, str]]:
    """(key, value) pairs describing a FoldReport."""
    counts = Counter(fold.rule for fold in report.applied)
    folds = ",".join(f"{rule}={n}" for rule, n in sorted(counts.items())) or "none"
    verification = report.verification
    summary = verification.status
    worst = verification.worst_output()
    if worst is not None:
        summary += (f"; worst output max abs error {worst['max_abs_error']:.3g} "
                    f"({worst['max_scaled_error']:.3g} of max(1, channel magnitude)); "
                    f"samples {(verification.details or {}).get('samples')}")
    return [(f"{PREFIX}version", __version__), (f"{PREFIX}folds", folds), (f"{PREFIX}verification", summary)]


def add_provenance(model: onnx.ModelProto, report) -> None:
    """Add this run's entries to *model* (after strip_provenance removed an earlier run's)."""
    for key, value in provenance_entries(report):
        model.metadata_props.add(key=key, value=value)
