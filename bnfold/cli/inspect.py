"""``bnfold inspect``: a table of every BatchNormalization, whether it folds (and by which rule) or why not."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import click

from bnfold.cli.options import rule_options
from bnfold.cli.render import some_names
from bnfold.cli.report_output import echo_human, emit_json, json_option, prepare_json
from bnfold.cli.verbosity import verbosity_options

LIST_LIMIT = 40  # list BatchNormalizations one per line up to this many; group beyond (unless --verbose)


EXAMPLES = """\b
Examples:
  bnfold inspect model.onnx
  bnfold inspect model.onnx -v               # every BatchNormalization, ungrouped
  bnfold inspect model.onnx --json - | jq .totals
"""


@click.command("inspect", short_help="List each BatchNormalization: folds, or why not.", epilog=EXAMPLES)
@click.argument("model", type=click.Path(path_type=Path))
@json_option("Write the JSON report here (the table then goes to standard error).")
@rule_options
@verbosity_options
def inspect_command(model: Path, json_path: Path | None, rules, skip_rules, quiet: bool, verbose: bool) -> None:
    """List every BatchNormalization in MODEL (subgraphs included) and whether `bnfold optimize` folds it.

    The answer comes from running the real fold on a copy, so it agrees with `optimize` (which may still
    revert a fold that fails verification). Exit codes: 0 ok; 2 usage; 3 model unreadable or invalid;
    130 interrupted.
    """
    from bnfold.inspection import inspect

    prepare_json(json_path, reads=[model])
    report = inspect(model, rules=rules, skip_rules=skip_rules)
    if json_path is not None:
        emit_json(json_path, report.to_json())
    if not quiet:
        echo_human(render_inspection(report, str(model), verbose=verbose), json_path)


def render_inspection(report, source: str, *, verbose: bool = False) -> str:
    """The readable form of an InspectReport: one line per BatchNormalization (grouped when many), totals."""
    lines = [f"bnfold inspect {source}"]
    sites = report.batchnorms
    if not sites:
        lines.append("  no BatchNormalization")
    elif verbose or len(sites) <= LIST_LIMIT:
        lines += _table(sites)
    else:
        lines += _grouped_foldable([s for s in sites if s.foldable])
        left = [s for s in sites if not s.foldable]
        if left:
            lines += _table(left) if len(left) <= LIST_LIMIT else _grouped_refused(left)
    lines += [_affine_line(report), _totals_line(report)]
    return "\n".join(lines)


def _result(site) -> str:
    if site.foldable:
        return f"folds ({site.rule}) into {site.sentence.removeprefix('folds into ')}"
    return f"stays: {site.reason.value} - {site.sentence} ({site.detail})"


def _table(sites) -> list[str]:
    header = ("BatchNormalization", "graph", "producer", "channels", "result")
    rows = [(s.name, s.graph, s.producer_op or "(input)", "?" if s.channels is None else str(s.channels),
             _result(s)) for s in sites]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]

    def line(row) -> str:
        name, graph, producer, channels, result = row
        return (f"  {name:<{widths[0]}}  {graph:<{widths[1]}}  {producer:<{widths[2]}}  "
                f"{channels:>{widths[3]}}  {result}")

    return [line(header), *(line(row) for row in rows)]


def _grouped_foldable(sites) -> list[str]:
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for site in sites:
        groups[(site.rule, site.producer_op or "(input)")].append(site.name)
    lines = [f"Foldable ({len(sites)}), by rule and producer:"] if sites else []
    for (rule, producer), names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  {rule} after {producer} ({len(names)}): {some_names(names)}")
    return lines


def _grouped_refused(sites) -> list[str]:
    groups: dict[str, list] = defaultdict(list)
    for site in sites:
        groups[site.reason.value].append(site)
    lines = [f"Left in place ({len(sites)}), by reason:"]
    for reason, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  {reason} ({len(members)}): {members[0].sentence}: {some_names([s.name for s in members])}")
    return lines


def _affine_line(report) -> str:
    totals = report.totals
    if not report.affine:
        return "Affine Mul/Add/Sub/Div by constants: none recognised"
    reasons: dict[str, int] = defaultdict(int)
    for site in report.affine:
        if not site.foldable:
            reasons[site.reason.value] += 1
    left = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    rules = ", ".join(sorted({site.rule for site in report.affine if site.foldable})) or "none"
    return (f"Affine Mul/Add/Sub/Div by constants: {totals.affine_foldable} fold ({rules}), "
            f"{totals.affine_refused} stay" + (f" ({left})" if left else ""))


def _totals_line(report) -> str:
    totals = report.totals
    reasons = ", ".join(f"{reason} {n}" for reason, n in totals.by_reason.items())
    return (f"Totals: {totals.batchnorms} BatchNormalization, {totals.foldable} foldable, {totals.refused} stay"
            + (f" ({reasons})" if reasons else ""))
