"""Many models at once: the folder mode of ``bnfold optimize`` and the engine behind ``bnfold check``.

Each model goes through ``optimize_file`` on its own (in a worker process when there are several), so one
bad model becomes one failed row of the summary and never stops the others.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click

from bnfold.cli.optimize_file import FileOutcome, OptimizeSettings, optimize_file
from bnfold.errors import ExitCode, ModelLoadError, OutputWriteError, UsageError
from bnfold.report import SCHEMA_VERSION

# The batch's exit code is the first of these that any model hit: a wrong or unfolded model (1) matters most
# to CI, then models that could not be read (3), then outputs that could not be written (4), then usage (2).
FAILURE_PRIORITY = (ExitCode.FAILED, ExitCode.MODEL_ERROR, ExitCode.OUTPUT_ERROR, ExitCode.USAGE)
SUMMARY_JSON = "summary.json"


@dataclass(frozen=True)
class ModelJob:
    """One model of a batch; plain data, so it crosses into worker processes."""

    source: Path
    label: Path  # shown in the summary; the relative path that outputs and reports mirror
    output: Path | None  # None: --check (nothing written) or --in-place (the source itself)
    settings: OptimizeSettings


def optimize_folder(source: Path, output: Path | None, settings: OptimizeSettings, *, json_dir: Path | None,
                    jobs: int | None, recursive: bool, quiet: bool) -> int:
    """``bnfold optimize DIR``: every ``*.onnx`` in DIR (and its subfolders with ``recursive``); the exit code.

    - Every ``*.onnx`` file (any case) is taken, ``*.folded.onnx`` included (re-folding is a no-op copy);
      files and folders whose name starts with '.' are not, nor OUTDIR/JSONDIR when they lie inside DIR.
    - ``-o OUTDIR`` is required unless ``--check`` (nothing is written) or ``--in-place``. Outputs keep their
      path relative to DIR. Unlike single-file mode, OUTDIR is created when missing, but only inside an
      existing folder (a mistyped path must not grow a tree); subfolders mirroring DIR are created freely.
      External data goes to ``<output>.data`` beside each output model.
    - ``--json JSONDIR``: ``JSONDIR/<relative path>.json`` per model (an error document for models that
      could not be processed) and ``JSONDIR/summary.json`` for the batch.
    - ``jobs`` worker processes (default: CPU count; 1 runs in this process).
    - Exit code 0 when every model is ok, else the first of FAILED (1), MODEL_ERROR (3), OUTPUT_ERROR (4),
      USAGE (2) that some model hit. A folder without models is an error (ModelLoadError, exit 3): a
      batch over nothing is more likely a wrong path or a forgotten ``--recursive`` than intended.
    """
    from bnfold.optimizer import select_rules

    select_rules(settings.rules, settings.skip_rules)  # unknown rules: one usage error, not one per model
    out_dir = _output_folder(source, output, settings)
    found = discover_models(source, recursive=recursive, skip=[p for p in (out_dir, json_dir) if p is not None])
    if not found:
        raise ModelLoadError(no_models_message(source, recursive))
    for folder in (out_dir, json_dir):
        if folder is not None:
            make_folder(folder)
    relative = [path.relative_to(source) for path in found]
    model_jobs = [ModelJob(path, rel, None if out_dir is None else out_dir / rel, settings)
                  for path, rel in zip(found, relative, strict=True)]
    return run_models(model_jobs, jobs=jobs, json_dir=json_dir, quiet=quiet)


def _output_folder(source: Path, output: Path | None, settings: OptimizeSettings) -> Path | None:
    """Where outputs go: None for --check and --in-place; refuses contradictions before any work."""
    same = output is not None and output.resolve() == source.resolve()
    if settings.check:
        return None
    if settings.in_place:
        if output is not None and not same:
            raise UsageError("--in-place writes over the models; don't combine it with a different -o")
        return None
    if output is None:
        raise UsageError(f"{source} is a folder: pass -o OUTDIR for the folded models (or --check / --in-place)")
    if same:
        raise UsageError(f"-o {output} is the source folder; pass --in-place to overwrite the models")
    return output


def discover_models(source: Path, *, recursive: bool, skip: Sequence[Path] = ()) -> list[Path]:
    """``*.onnx`` files under *source*, sorted; hidden entries and the *skip* folders are left out."""
    skipped = {path.resolve() for path in skip}
    found: list[Path] = []
    for folder, dirs, files in os.walk(source):
        here = Path(folder)
        dirs[:] = [] if not recursive else sorted(
            d for d in dirs if not d.startswith(".") and (here / d).resolve() not in skipped)
        found += [here / f for f in files
                  if f.lower().endswith(".onnx") and not f.startswith(".") and (here / f).is_file()]
    return sorted(found, key=lambda path: path.relative_to(source).parts)


def no_models_message(source: Path, recursive: bool) -> str:
    return f"no .onnx models in {source}" + ("" if recursive else " (add --recursive to search subfolders)")


def make_folder(folder: Path) -> None:
    """Create *folder* if missing, but only inside an existing one; OutputWriteError otherwise."""
    if folder.is_dir():
        return
    if folder.exists():
        raise OutputWriteError(f"cannot write into {folder}: it is not a folder")
    if not folder.parent.is_dir():
        raise OutputWriteError(f"cannot create {folder}: folder {folder.parent} does not exist")
    try:
        folder.mkdir()
    except OSError as exc:
        raise OutputWriteError(f"cannot create {folder}: {exc.strerror or exc}") from None


def run_models(model_jobs: Sequence[ModelJob], *, jobs: int | None, json_dir: Path | None, quiet: bool) -> int:
    """Run every job, write the reports, print the summary (stdout) and problems (stderr); the exit code."""
    workers = max(1, min(jobs or os.cpu_count() or 1, len(model_jobs)))
    show_bar = not quiet and len(model_jobs) > 1 and sys.stderr.isatty()
    with _progress(len(model_jobs), show_bar) as advance:
        outcomes = _run_all(model_jobs, workers, advance)
    rows = list(zip(model_jobs, outcomes, strict=True))
    entries = _write_reports(json_dir, rows) if json_dir is not None else []
    if not quiet:
        click.echo("\n".join(summary_lines(rows)))
    for job, outcome in rows:
        if outcome.exit_code != ExitCode.OK:
            click.echo(f"Error: {job.label.as_posix()}: {outcome.message}", err=True)
        elif outcome.message and not quiet:
            click.echo(f"Warning: {job.label.as_posix()}: {outcome.message}", err=True)
    code = batch_exit_code(outcome.exit_code for outcome in outcomes)
    if json_dir is not None:
        from bnfold.io.model_file import write_text_atomic

        summary = {"schema_version": SCHEMA_VERSION, "exit_code": code, "models": entries}
        write_text_atomic(json_dir / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
    return code


def summary_lines(rows: Sequence[tuple[ModelJob, FileOutcome]]) -> list[str]:
    """The batch table (model, BatchNormalization before/after, verification, time, result) and a count."""
    header = ("model", "BN before", "BN after", "verified", "time", "result")
    table = [header, *(_summary_row(job, outcome) for job, outcome in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    numeric = {1, 2, 4}
    lines = ["  " + "  ".join(cell.rjust(width) if i in numeric else cell.ljust(width)
                              for i, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in table]
    ok = sum(outcome.exit_code == ExitCode.OK for _, outcome in rows)
    lines.append(f"{len(rows)} model{'s' if len(rows) != 1 else ''}: {ok} ok, {len(rows) - ok} failed")
    return lines


def _summary_row(job: ModelJob, outcome: FileOutcome) -> tuple[str, ...]:
    report = outcome.report
    counts = ("-", "-") if report is None else (str(report.before.batchnorms), str(report.after.batchnorms))
    verified = "-" if report is None else report.verification.status
    return (job.label.as_posix(), *counts, verified, f"{outcome.seconds:.2f} s",
            result_label(outcome, check=job.settings.check))


def result_label(outcome: FileOutcome, *, check: bool) -> str:
    code = outcome.exit_code
    if code == ExitCode.OK:
        return "ok, with a warning" if outcome.message else "ok"
    if code == ExitCode.FAILED:
        return "check failed: foldable BatchNormalization" if check else "verification failed"
    names: dict[int, str] = {ExitCode.USAGE: "usage error", ExitCode.MODEL_ERROR: "model error",
                             ExitCode.OUTPUT_ERROR: "output error"}
    return f"{names.get(code, 'error')} (exit {code})"


def batch_exit_code(codes) -> int:
    failures = {int(code) for code in codes if code != ExitCode.OK}
    for code in FAILURE_PRIORITY:
        if code in failures:
            return int(code)
    return max(failures, default=int(ExitCode.OK))


def run_job(job: ModelJob) -> FileOutcome:
    """One model, in a worker or in this process. Never raises: a bug becomes this model's failure."""
    if job.output is not None:
        try:
            job.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return FileOutcome(str(job.source), None, int(ExitCode.OUTPUT_ERROR),
                               f"cannot create {job.output.parent}: {exc.strerror or exc}")
    try:
        return optimize_file(job.source, job.output, job.settings)
    except Exception as exc:  # isolate the other models from a bug hit by this one
        return FileOutcome(str(job.source), None, int(ExitCode.MODEL_ERROR),
                           f"internal error ({type(exc).__name__}: {exc})")


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    with click.progressbar(length=total, label="Optimizing", file=sys.stderr) as bar:
        yield lambda: bar.update(1)


def _run_all(model_jobs: Sequence[ModelJob], workers: int, advance: Callable[[], None]) -> list[FileOutcome]:
    if workers == 1:
        serial: list[FileOutcome] = []
        for job in model_jobs:
            serial.append(run_job(job))
            advance()
        return serial
    outcomes: list[FileOutcome | None] = [None] * len(model_jobs)
    # spawn, not fork: the parent may hold onnxruntime threads, and forking a threaded process can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_job, job): i for i, job in enumerate(model_jobs)}
        for future in as_completed(futures):
            try:
                outcomes[futures[future]] = future.result()
            except BrokenProcessPool:
                continue  # a worker died (a crash in native code): retried one by one below
            advance()
    for i, outcome in enumerate(outcomes):
        if outcome is None:  # after a crash, run the rest alone so only the culprit fails
            outcomes[i] = _run_isolated(model_jobs[i], context)
            advance()
    return outcomes  # type: ignore[return-value]  # every slot is filled by now


def _run_isolated(job: ModelJob, context) -> FileOutcome:
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(run_job, job).result()
        except BrokenProcessPool:
            return FileOutcome(str(job.source), None, int(ExitCode.MODEL_ERROR),
                               "the worker process crashed while processing this model")


def _write_reports(json_dir: Path, rows: Sequence[tuple[ModelJob, FileOutcome]]) -> list[dict]:
    """JSONDIR/<relative path>.json per model; a report that cannot be written fails its model (exit 4)."""
    from bnfold.io.model_file import write_text_atomic

    entries = []
    for job, outcome in rows:
        name = job.label.with_name(job.label.name + ".json")
        document = outcome.report.to_json() if outcome.report is not None else json.dumps(
            {"schema_version": SCHEMA_VERSION, "source": outcome.source, "exit_code": outcome.exit_code,
             "error": outcome.message}, indent=2)
        try:
            (json_dir / name).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(json_dir / name, document + "\n")
        except (OSError, OutputWriteError) as exc:
            if outcome.exit_code == ExitCode.OK:
                outcome.exit_code, outcome.message = int(ExitCode.OUTPUT_ERROR), f"report not written: {exc}"
        entries.append(_summary_entry(job, outcome, name))
    return entries


def _summary_entry(job: ModelJob, outcome: FileOutcome, report_name: Path) -> dict:
    report = outcome.report
    return {"model": job.label.as_posix(), "source": outcome.source, "target": outcome.target,
            "exit_code": outcome.exit_code, "message": outcome.message,
            "bn_before": report.before.batchnorms if report is not None else None,
            "bn_after": report.after.batchnorms if report is not None else None,
            "verification": report.verification.status if report is not None else None,
            "seconds": round(outcome.seconds, 3), "report": report_name.as_posix()}
