"""The JSON of a batch (folder mode, ``check``): one report per model and the batch's summary document.

``--json JSONDIR`` (folder mode): ``JSONDIR/<relative path>.json`` per model (an ``optimize`` report, or an
error document for a model that could not be processed) and ``JSONDIR/summary.json`` (kind ``folder``)
naming each model's report file. ``--json -`` (folder mode) and ``check --json PATH|-``: the summary alone,
each model's report embedded in its entry instead of named.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from bnfold.cli.optimize_file import FileOutcome
from bnfold.cli.report_output import FilesInUse, add_inputs, emit_json, refuse_clobbering, to_stdout
from bnfold.errors import ExitCode, OutputWriteError
from bnfold.report import envelope

SUMMARY_JSON = "summary.json"


def report_name(label: Path) -> Path:
    return label.with_name(label.name + ".json")


def refuse_clobbering_batch(json_dir: Path | None, jobs: Sequence, inputs: str | Path | None = None) -> None:
    """No report of the batch (per-model or summary) may replace a model, an output, a data file or an
    ``--inputs`` file."""
    if json_dir is None or to_stdout(json_dir):
        return
    every_read = [job.source for job in jobs]
    every_write = [job.output for job in jobs if job.output is not None]
    in_use = FilesInUse()
    in_use.add_models(every_read, every_write)  # a report must not replace any model of the batch
    add_inputs(in_use, inputs)
    for job in jobs:
        refuse_clobbering(json_dir / report_name(job.label), reads=[job.source], in_use=in_use,
                          writes=[job.output] if job.output is not None else [])
    refuse_clobbering(json_dir / SUMMARY_JSON, reads=every_read, writes=every_write, in_use=in_use)


def model_document(outcome: FileOutcome) -> dict:
    """The model's optimize report, or (when it could not be processed) an error document of kind optimize."""
    if outcome.report is not None:
        return outcome.report.to_dict()
    return envelope("optimize", {"source": outcome.source, "exit_code": outcome.exit_code,
                                 "error": outcome.message})


def write_model_reports(json_dir: Path, rows: Sequence[tuple]) -> None:
    """JSONDIR/<relative path>.json per model; a report that cannot be written fails its model (exit 4)."""
    from bnfold.io.atomic import write_text_atomic

    for job, outcome in rows:
        name = report_name(job.label)
        try:
            (json_dir / name).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(json_dir / name, json.dumps(model_document(outcome), indent=2) + "\n")
        except (OSError, OutputWriteError) as exc:
            if outcome.exit_code == ExitCode.OK:
                outcome.exit_code, outcome.message = int(ExitCode.OUTPUT_ERROR), f"report not written: {exc}"


def summary_document(kind: str, rows: Sequence[tuple], code: int, *, embed: bool,
                     shard: tuple[int, int] | None = None) -> dict:
    """The batch's summary: exit code, shard, one entry per model (its report embedded or named)."""
    entries = [_entry(job, outcome, model_document(outcome) if embed else report_name(job.label).as_posix())
               for job, outcome in rows]
    body = {"exit_code": code, "shard": None if shard is None else {"index": shard[0], "count": shard[1]},
            "models": entries}
    return envelope(kind, body)


def _entry(job, outcome: FileOutcome, report: dict | str) -> dict:
    report_obj = outcome.report
    return {"model": job.label.as_posix(), "source": outcome.source, "target": outcome.target,
            "exit_code": outcome.exit_code, "message": outcome.message,
            "bn_before": report_obj.before.batchnorms if report_obj is not None else None,
            "bn_after": report_obj.after.batchnorms if report_obj is not None else None,
            "verification": report_obj.verification.status if report_obj is not None else None,
            "seconds": round(outcome.seconds, 3), "report": report}


def emit_batch(json_path: Path | None, kind: str, rows: Sequence[tuple], code: int, *, per_model_files: bool,
               shard: tuple[int, int] | None) -> None:
    """Write the batch's JSON: a folder of reports plus summary.json, or one summary document."""
    if json_path is None:
        return
    if per_model_files and not to_stdout(json_path):
        summary = summary_document(kind, rows, code, shard=shard, embed=False)
        emit_json(json_path / SUMMARY_JSON, json.dumps(summary, indent=2))
        return
    emit_json(json_path, json.dumps(summary_document(kind, rows, code, shard=shard, embed=True), indent=2))
