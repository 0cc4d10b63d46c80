"""Plain-text rendering of a FoldReport: the before/after table, folds by rule, refusals by reason."""

from __future__ import annotations

from collections import Counter, defaultdict

GROUP_AFTER = 6  # list refused sites one by one up to this many, then group by reason
SHOWN_NAMES = 4  # names quoted per group line


def some_names(names: list[str]) -> str:
    """The first few *names*, comma-separated, with ", ..." when there are more."""
    return ", ".join(names[:SHOWN_NAMES]) + (", ..." if len(names) > SHOWN_NAMES else "")


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    """Binary units, named as such (KiB = 1024 bytes)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def stats_table(report, size_before: int | None, size_after: int | None) -> list[str]:
    rows = [
        ("BatchNormalization", report.before.batchnorms, report.after.batchnorms),
        ("nodes", report.before.nodes, report.after.nodes),
        ("parameters", f"{report.before.parameters:,}", f"{report.after.parameters:,}"),
        ("file size", human_bytes(size_before), human_bytes(size_after)),
    ]
    lines = [f"  {'':<20}{'before':>14}{'after':>14}"]
    lines += [f"  {name:<20}{before!s:>14}{after!s:>14}" for name, before, after in rows]
    return lines


def folds_line(report) -> str:
    counts = Counter(f.rule for f in report.applied)
    if not counts:
        return "Folded nothing."
    parts = ", ".join(f"{rule} {n}" for rule, n in counts.most_common())
    return f"Folded {len(report.applied)}: {parts}"


def refused_lines(report, *, verbose: bool = False) -> list[str]:
    """BatchNormalizations left in place (one by one, or grouped by reason when many unless *verbose*);
    affine sites counted."""
    bns = [s for s in report.refused if s.op_type == "BatchNormalization"]
    affine = [s for s in report.refused if s.op_type != "BatchNormalization"]
    lines: list[str] = []
    if bns:
        lines.append(f"Left {len(bns)} BatchNormalization:")
        if verbose or len(bns) <= GROUP_AFTER:
            lines += [f"  {s.node} [{s.graph}]: {s.reason.value} - {s.sentence} ({s.detail})" for s in bns]
        else:
            groups = defaultdict(list)
            for s in bns:
                groups[s.reason].append(s.node)
            for reason, nodes in sorted(groups.items(), key=lambda kv: -len(kv[1])):
                lines.append(f"  {reason.value} ({len(nodes)}): {reason.sentence}: {some_names(nodes)}")
    if affine:
        reasons = Counter(s.reason.value for s in affine)
        lines.append(f"Left {len(affine)} Mul/Add/Sub/Div by constants: "
                     + ", ".join(f"{r} {n}" for r, n in reasons.most_common()))
    return lines


def verification_line(report) -> str:
    summary = report.verification
    if summary.status == "passed":
        worst, samples = summary.worst_output(), (summary.details or {}).get("samples")
        figures = "" if worst is None else (
            f"worst output {worst['name']!r}: max abs error {worst['max_abs_error']:.2g}, "
            f"{worst['max_scaled_error']:.2g} of max(1, its channel's magnitude); ")
        return (f"Verified: outputs and {len(report.applied)} folded tensors match ({figures}{samples} samples, "
                f"onnxruntime with graph optimizations disabled)")
    if summary.status == "not_verified":
        return f"WARNING: NOT VERIFIED: {summary.message}"
    if summary.status == "failed":
        return f"Verification FAILED: {summary.message}"
    return f"Verification {summary.status}: {summary.message}"


def reverted_lines(report) -> list[str]:
    return [f"Reverted {r.rule} at {r.node} [{r.graph}]: its output {r.output!r} was off by "
            f"{r.error_vs_magnitude:.3g} of its magnitude (max abs {r.max_abs_error:.3g})" for r in report.reverted]


def render(report, *, source: str, target: str | None, size_before: int | None, size_after: int | None,
           seconds: float, verbose: bool = False) -> str:
    head = f"bnfold optimize {source}" + (f" -> {target}" if target else " (nothing written)")
    lines = [head, *stats_table(report, size_before, size_after),
             f"  time {seconds:.2f} s (fold {report.fold_seconds:.2f} s)", folds_line(report)]
    if report.removed_inputs:  # --freeze-initializers
        removed = list(report.removed_inputs)
        lines.append(f"Removed {len(removed)} initializer-backed graph inputs: {some_names(removed)}")
    lines += reverted_lines(report) + refused_lines(report, verbose=verbose) + [verification_line(report)]
    return "\n".join(lines)
