"""Atomic file writing: the destination is either the old file or the complete new one, never half of one.

A temporary file is created in the destination's folder (same filesystem, so the final rename is atomic),
written (its pages sent to disk as it grows: :mod:`bnfold.io.writeback`), flushed, fsynced and renamed over the
destination. On any failure, KeyboardInterrupt or SIGTERM
(see ``SignalGuard``) the temporary file is removed. Used for models, external data files and reports.
Temporaries are named ``.<name>.<pid>.<random>.tmp``, so that the next save can clear those of a killed process
(``bnfold.io.stale``); the steps that must not split run with signals deferred (``bnfold.io.signals``).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from bnfold.errors import OutputWriteError
from bnfold.io.signals import SignalGuard, SignalTerminated, deferred_signals
from bnfold.io.stale import backup_path, clear_stale, temporary_prefix
from bnfold.io.writeback import WritebackFile

__all__ = ["SignalGuard", "SignalTerminated", "atomic_write", "write_text_atomic", "staged", "require_folder",
           "sync_folder", "commit_pair", "clear_stale", "signals_held", "scratch_folder"]


class _Stage:
    """A temporary file beside its destination; ``commit`` syncs it and renames it into place."""

    def __init__(self, destination: Path, temporary: Path, handle: WritebackFile) -> None:
        self.destination, self.temporary, self.handle = destination, temporary, handle
        self.committed = False

    def commit(self) -> None:
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            os.chmod(self.temporary, _new_file_mode(self.destination))
            self.handle.close()
            os.replace(self.temporary, self.destination)
        except OSError as exc:
            raise _write_error(self.destination, exc) from None
        self.committed = True

    def discard(self) -> None:
        try:
            self.handle.close()
        except OSError:
            pass
        if not self.committed:
            try:
                os.unlink(self.temporary)
            except FileNotFoundError:
                pass


signals_held = deferred_signals  # the name earlier callers know


def commit_pair(data: _Stage | None, model: _Stage) -> None:
    """Rename a new data file and the model that reads it into place as one step.

    A SIGINT/SIGTERM arriving meanwhile, in any thread, takes effect only once both renames are done
    (``deferred_signals``). Should the model's rename still fail after the data file's, the old data file
    (kept as a hard link until then) is put back, so the old model never reads new data; once the model is
    renamed nothing is rolled back, so the new model never reads old data.
    """
    with deferred_signals():
        backup = _link_backup(data.destination) if data is not None else None
        try:
            if data is not None:
                data.commit()
            model.commit()
        except BaseException:
            if backup is not None and data is not None and data.committed and not model.committed:
                os.replace(backup, data.destination)
                backup = None
            raise
        finally:
            if backup is not None:
                os.unlink(backup)


def _link_backup(path: Path) -> Path | None:
    if not path.exists():
        return None
    backup = backup_path(path)
    try:
        os.link(path, backup)
    except OSError:
        return None  # no hard links here: fall back to the plain two renames
    return backup


def _new_stage(destination: Path) -> _Stage:
    try:
        fd, temporary = tempfile.mkstemp(prefix=temporary_prefix(destination), suffix=".tmp",
                                         dir=destination.parent)
    except OSError as exc:
        raise _write_error(destination, exc) from None
    try:
        return _Stage(destination, Path(temporary), WritebackFile(os.fdopen(fd, "wb")))
    except BaseException:
        os.unlink(temporary)
        raise


@contextmanager
def staged(destination: Path) -> Iterator[_Stage]:
    """A temporary file beside ``destination``, removed on exit unless committed; OSError -> OutputWriteError."""
    # Signals are deferred while the temporary is created and its cleanup armed, so an interrupt can't land
    # between the two and leave a stray file behind.
    stage = None
    try:
        with deferred_signals():
            stage = _new_stage(destination)
        yield stage
    except OSError as exc:
        raise _write_error(destination, exc) from None
    finally:
        if stage is not None:
            with deferred_signals():  # a signal between closing the temporary and removing it would leave it
                stage.discard()


@contextmanager
def scratch_folder(prefix: str) -> Iterator[str]:
    """A temporary folder, removed on exit; a signal landing right as it is created or removed can't leave it
    behind (it takes effect once the folder is gone)."""
    folder = None
    try:
        with deferred_signals():
            folder = tempfile.TemporaryDirectory(prefix=prefix)
        yield folder.name
    finally:
        if folder is not None:
            with deferred_signals():  # a signal landing mid-removal would leave the folder half removed
                folder.cleanup()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` with a binary file that becomes ``path`` only if it returns normally.

    On an exception, KeyboardInterrupt or SIGTERM the temporary file is removed and ``path`` is untouched.
    OSErrors (from ``write`` too) become OutputWriteError naming the path and the reason.
    """
    path = Path(path)
    require_folder(path)
    clear_stale(path)
    with SignalGuard(), staged(path) as stage:
        write(stage.handle)  # type: ignore[arg-type]  # WritebackFile delegates to the file it wraps
        stage.commit()
    sync_folder(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 text (reports, tables)."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def require_folder(path: Path) -> None:
    folder = path.parent
    if not folder.exists():
        raise OutputWriteError(f"cannot write {path}: output folder {folder} does not exist")
    if not folder.is_dir():
        raise OutputWriteError(f"cannot write {path}: {folder} is not a folder")
    if path.is_dir():
        raise OutputWriteError(f"cannot write {path}: it is a directory")
    if path.exists() and not path.is_file():
        raise OutputWriteError(f"cannot write {path}: it exists and is not a regular file (device, FIFO, socket)")


def _write_error(path: Path, exc: OSError) -> OutputWriteError:
    return OutputWriteError(f"cannot write {path}: {exc.strerror or exc}")


def _new_file_mode(destination: Path) -> int:
    """Keep the replaced file's permissions; new files get the usual 0666 minus umask (mkstemp makes 0600)."""
    try:
        return stat.S_IMODE(destination.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # Reading it via os.umask() would briefly change it for every thread; Linux exposes it read-only.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def sync_folder(folder: Path) -> None:
    """Make the rename itself durable; not every platform or filesystem allows syncing a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
