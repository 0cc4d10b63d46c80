"""``--json`` for every command: ``-`` is standard output, anything else a file written atomically.

With ``--json -`` standard output carries the JSON document and nothing else: every human line (the
report table, warnings, summaries) goes to standard error instead, so ``bnfold ... --json - | jq`` works.

A report path must never be a file the command reads or writes (issue 14: ``--json model.onnx`` replaced
the model by its report). :func:`refuse_clobbering` compares the report path with each model, each
output and every external data file either uses, however spelled: the same inode (hard links, symbolic
links, ``..``) where both exist, the same resolved path otherwise. It raises before any work.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import click

from bnfold.errors import UsageError

STDOUT = "-"


def json_option(help_text: str):
    """The ``--json PATH`` option, ``-`` allowed (standard output)."""
    return click.option("--json", "json_path", type=click.Path(path_type=Path, allow_dash=True), default=None,
                        metavar="PATH|-", help=help_text + " '-' writes it to standard output (and nothing else).")


def to_stdout(json_path: Path | str | None) -> bool:
    return json_path is not None and str(json_path) == STDOUT


def echo_human(text: str, json_path: Path | str | None = None, *, err: bool = False) -> None:
    """A human line: on standard output, unless standard output carries the JSON (or *err*)."""
    click.echo(text, err=err or to_stdout(json_path))


def emit_json(json_path: Path | str, document: str) -> None:
    """The JSON document to standard output (``-``) or atomically into a file."""
    if to_stdout(json_path):
        click.echo(document)
        return
    from bnfold.io.atomic import write_text_atomic

    write_text_atomic(Path(json_path), document.rstrip("\n") + "\n")


def prepare_json(json_path: Path | None, *, reads: Iterable[Path] = (), writes: Iterable[Path] = (),
                 inputs: str | Path | None = None) -> None:
    """Fail now, before any work, when the report could not be written or would replace a file in use:
    *reads* are models read (their external data files count too), *writes* files the command writes,
    *inputs* the ``--inputs`` file (or folder of files)."""
    if json_path is None or to_stdout(json_path):
        return
    from bnfold.io.atomic import require_folder

    require_folder(json_path)
    reads, writes = list(reads), list(writes)
    known = FilesInUse()
    known.add_models(reads, writes)
    add_inputs(known, inputs)
    refuse_clobbering(json_path, reads=reads, writes=writes, in_use=known)


def add_inputs(known: FilesInUse, inputs: str | Path | None) -> None:
    """The ``--inputs`` file, or every file of an ``--inputs`` folder, as files in use."""
    if inputs is None:
        return
    path = Path(inputs)
    for item in sorted(path.iterdir()) if path.is_dir() else [path]:
        known.add(item, "an --inputs file:")


class FilesInUse:
    """Files a command reads or writes, found by device and inode (where they exist) or resolved path, so a
    batch of thousands of models checks each report path in constant time."""

    def __init__(self) -> None:
        self._inodes: dict[tuple[int, int], tuple[Path, str]] = {}
        self._paths: dict[str, tuple[Path, str]] = {}

    def add(self, path: Path, role: str) -> None:
        self._paths.setdefault(os.path.realpath(path), (path, role))
        try:
            info = os.stat(path)
        except OSError:
            return
        self._inodes.setdefault((info.st_dev, info.st_ino), (path, role))

    def add_models(self, reads: Iterable[Path], writes: Iterable[Path]) -> None:
        for model in reads:
            self.add(model, "the input model")
        for output in writes:
            self.add(output, "the output")
            self.add(output.with_name(output.name + ".data"), "the external data file of the output")

    def find(self, path: Path) -> tuple[Path, str] | None:
        """What *path* is (the file in use and its role), or None."""
        try:
            info = os.stat(path)
        except OSError:
            info = None
        hit = None if info is None else self._inodes.get((info.st_dev, info.st_ino))
        return hit or self._paths.get(os.path.realpath(path))


def refuse_clobbering(report: Path, *, reads: Iterable[Path] = (), writes: Iterable[Path] = (),
                      in_use: FilesInUse | None = None) -> None:
    """UsageError when *report* is one of *reads* or *writes*, an external data file of one of them, or the
    ``<output>.data`` file an output may get (*in_use*: more files already known, e.g. a whole batch)."""
    reads, writes = list(reads), list(writes)
    known = FilesInUse() if in_use is None else in_use
    if in_use is None:
        known.add_models(reads, writes)
    hit = known.find(report)
    if hit is None and os.path.lexists(report):  # an existing file can also be an external data file
        data = FilesInUse()
        for model in reads + [out for out in writes if out.is_file()]:
            for path in data_files(model, near=report):
                data.add(path, f"an external data file of {model}:")
        hit = data.find(report)
    if hit is not None:
        path, role = hit
        raise UsageError(f"--json {report} is {role} {path}; the report would replace it: choose another name")


def data_files(model: Path, *, near: Path | None = None) -> list[Path]:
    """The external data files *model* names (its structure is parsed; no weight is read). Empty for a
    missing or unreadable model (the command itself reports that), and without parsing when *near* lies
    outside the model's folder, where bnfold never reads external data from."""
    if not model.is_file():
        return []
    folder = os.path.realpath(model.absolute().parent)
    if near is not None and not os.path.realpath(near).startswith(folder + os.sep):
        if not _has_other_links(near):
            return []
    from bnfold.errors import BnfoldError
    from bnfold.io.external_data import check_external_data
    from bnfold.io.model_file import load_model

    try:
        structure = load_model(model, load_external_data=False)
        refs = check_external_data(structure, model.absolute().parent, require_files=False)
    except BnfoldError:
        return []
    return [Path(ref.path) for ref in refs]


def _has_other_links(near: Path) -> bool:
    """A hard link can sit anywhere: an existing report file with several links must be compared too."""
    try:
        return os.stat(near).st_nlink > 1
    except OSError:
        return False
