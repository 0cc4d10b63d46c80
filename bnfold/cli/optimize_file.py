"""One model through ``bnfold optimize``: fold, verify, write atomically, and describe the outcome.

Kept apart from the click command so the folder mode can run it in worker processes (everything
here is picklable: plain settings in, a plain outcome out).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnfold.errors import BnfoldError, ExitCode, UsageError, VerificationFailed


@dataclass(frozen=True)
class OptimizeSettings:
    rules: tuple[str, ...] | None = None
    skip_rules: tuple[str, ...] | None = None
    verify: bool = True
    revert: bool = True
    force: bool = False
    strict: bool = False
    metadata: bool = True
    check: bool = False
    in_place: bool = False
    inputs: str | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    samples: int = 2
    seed: int = 0
    value_range: tuple[float, float] | None = None
    atol: float | None = None
    rtol: float | None = None
    provider: str = "cpu"
    freeze_initializers: bool = False
    external_data: bool | None = None  # --save-as-external-data: None keeps the automatic rule


@dataclass
class FileOutcome:
    source: str
    target: str | None
    exit_code: int
    message: str = ""
    report: Any = None  # FoldReport (or None when the model could not be processed)
    size_before: int | None = None
    size_after: int | None = None
    seconds: float = 0.0


def default_target(source: Path) -> Path:
    return source.with_name(f"{source.stem}.folded.onnx")


def resolve_target(source: Path, output: Path | None, in_place: bool) -> Path:
    """Where the result goes; refuses to overwrite the input unless --in-place."""
    if in_place:
        if output is not None and output.resolve() != source.resolve():
            raise UsageError("--in-place writes over the input; don't combine it with a different -o")
        return source
    target = output if output is not None else default_target(source)
    if target.exists() and target.resolve() == source.resolve():
        raise UsageError(f"-o {target} is the input file; pass --in-place to overwrite it")
    return target


def _refuse_clobbering_input_data(source: Path, target: Path) -> None:
    """The output (or its ``.data`` file) must not land on a file the input model reads its tensors from."""
    at_risk = [p for p in (target, target.with_name(target.name + ".data")) if p.exists()]
    if not at_risk:
        return  # nothing there to clobber: skip parsing the input an extra time
    from bnfold.io import model_file as io
    from bnfold.io.external_data import check_external_data

    model = io.load_model(source, load_external_data=False)
    used = {os.path.realpath(source)} | {os.path.realpath(ref.path) for ref in check_external_data(
        model, source.absolute().parent, require_files=False)}
    for path in at_risk:
        if os.path.realpath(path) in used:
            raise UsageError(f"-o {target} would overwrite {path}, which the input model reads; choose another name")


def _data_files(model_path: Path) -> set[Path]:
    """The external data files a model file reads (resolved), from its structure alone."""
    from bnfold.io import model_file as io
    from bnfold.io.external_data import check_external_data

    model = io.load_model(model_path, load_external_data=False)
    return {Path(os.path.realpath(ref.path)) for ref in check_external_data(
        model, model_path.absolute().parent, require_files=False)}


def optimize_file(source: Path, output: Path | None, settings: OptimizeSettings, *,
                  last: bool = False) -> FileOutcome:
    """Process one model; never raises for model problems: they become the outcome's exit code.

    *last*: this model is all the run writes, so once its file is in place SIGINT/SIGTERM are ignored until the
    command's signal guard exits (a late signal can't make a finished run report "interrupted").
    """
    started = time.perf_counter()
    outcome = FileOutcome(source=str(source), target=None, exit_code=int(ExitCode.OK))
    try:
        _run(source, output, settings, outcome, last)
    except VerificationFailed as exc:
        outcome.exit_code, outcome.message, outcome.report = int(exc.exit_code), str(exc), exc.report
    except BnfoldError as exc:
        outcome.exit_code, outcome.message = int(exc.exit_code), str(exc)
    outcome.seconds = time.perf_counter() - started
    return outcome


def _run(source: Path, output: Path | None, settings: OptimizeSettings, outcome: FileOutcome,
         last: bool = False) -> None:
    from bnfold.cli.input_shapes import resolve_shapes
    from bnfold.io import model_file as io
    from bnfold.optimizer import optimize

    target = None if settings.check else resolve_target(source, output, settings.in_place)
    if target is not None:
        io.require_folder(target)  # fail before the work, not after it
    result = optimize(source, rules=settings.rules, skip_rules=settings.skip_rules,
                      verify=settings.verify and not settings.check, revert=settings.revert,
                      strict=settings.strict, force=settings.force, inputs=settings.inputs,
                      input_shapes=resolve_shapes(source, settings.input_shapes) or None,
                      samples=settings.samples, seed=settings.seed,
                      value_range=settings.value_range, atol=settings.atol, rtol=settings.rtol,
                      provider=settings.provider, metadata=settings.metadata,
                      freeze_initializers=settings.freeze_initializers)
    outcome.report = result.report
    outcome.size_before = source.stat().st_size
    if settings.check:
        foldable = [f for f in result.report.applied if f.op_type == "BatchNormalization"]
        if foldable:
            outcome.exit_code = int(ExitCode.FAILED)
            outcome.message = f"{len(foldable)} foldable BatchNormalization remain (e.g. {foldable[0].node})"
        return
    assert target is not None  # (only --check writes nothing)
    if target != source and result.source_external_data:
        _refuse_clobbering_input_data(source, target)
    old_data = _data_files(source) if target == source and result.source_external_data else set()
    (_write_to_the_end if last else _write)(source, target, result, settings.external_data)
    outcome.target = str(target)  # only once written: a failed write reports "(nothing written)"
    outcome.size_after = os.path.getsize(target)
    left = sorted(old_data - _data_files(target)) if old_data else []
    if left:  # --in-place writes <model>.data: a data file under another name would stay behind unseen
        now = f"now in {target.name}.data" if _data_files(target) else "now inside it"
        outcome.message = (f"{', '.join(p.name for p in left)} no longer used by {target.name} (its tensors are "
                           f"{now}); delete it unless another model reads it")
    if result.report.verification.status == "failed":  # only reachable with --force
        outcome.message = "written despite failed verification (--force)"


def _write_to_the_end(source: Path, target: Path, result, choice: bool | None) -> None:
    """``_write``, after which the run can no longer be interrupted: a signal that lands once the new file
    has been renamed into place (inside the write's last steps, or just after them) is too late to stop
    anything, so it is dropped and the run ends as it would have a moment later, instead of reporting
    "interrupted" over a file it did replace."""
    from bnfold.io.model_file import sync_folder
    from bnfold.io.signals import ignore_termination_signals

    before = _identity(target)
    try:
        _write(source, target, result, choice)
        ignore_termination_signals()
    except KeyboardInterrupt:
        if _identity(target) in (None, before):  # the new file never arrived: the interrupt stands
            raise
        ignore_termination_signals()
        sync_folder(target.parent)  # the step the interrupt cut short


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file *path* is (device, inode): a rename into place gives it a new one."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _write(source: Path, target: Path, result, choice: bool | None = None) -> None:
    """Write the result; *choice* is --save-as-external-data (None: the automatic rule, external data
    where the input had it)."""
    from bnfold.io import model_file as io

    # An external-data input was loaded lazily: the weights the fold left alone are copied from its data files
    external, folder = result.source_external_data, result.external_folder
    layout = choice if choice is not None else (True if external else None)
    same_layout = choice is None or choice == external
    if not result.report.changed and same_layout and target == source:
        pass  # in place and nothing to change: the file stays as it is
    elif not result.report.changed and same_layout and not external:
        io.atomic_write(target, lambda handle: _copy_into(source, handle))
    else:
        if layout is False and folder is not None:
            _load_remaining_weights(result.model, folder)
            folder = None
        # streamed piece by piece: faster than writing one big bytes object
        io.save_model(result.model, target, external_data=layout, source_folder=folder)


def _load_remaining_weights(model, folder: Path) -> None:
    """--no-save-as-external-data on an external-data input: the weights still in its data files come
    into the model (checked locations, as when loading)."""
    from bnfold.io.external_data import check_external_data, read_external_data

    read_external_data(check_external_data(model, Path(folder), require_files=True))


def _copy_into(source: Path, handle) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, handle, length=1 << 20)
