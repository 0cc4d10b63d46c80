"""Atomic file writing: the destination is either the old file or the complete new one, never half of one.

A temporary file is created in the destination's folder (same filesystem, so the final rename is atomic),
written (its pages sent to disk as it grows: :mod:`bnfold.io.writeback`), flushed, fsynced and renamed over the
destination. On any failure, KeyboardInterrupt or SIGTERM
(see ``SignalGuard``) the temporary file is removed. Used for models, external data files and reports.
"""

from __future__ import annotations

import os
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from bnfold.errors import OutputWriteError
from bnfold.io.writeback import WritebackFile

__all__ = ["SignalGuard", "SignalTerminated", "atomic_write", "write_text_atomic", "staged", "require_folder",
           "sync_folder"]


class SignalTerminated(KeyboardInterrupt):
    """A termination signal, raised as KeyboardInterrupt so ``finally`` clean-ups run."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


class SignalGuard:
    """While active, SIGTERM raises ``SignalTerminated`` in the main thread instead of killing the process.

    Without it, a plain SIGTERM ends Python without unwinding, leaving temporary files behind. Installed only
    in the main thread (the only place Python allows handlers); a signal the process ignores stays ignored.
    The previous handlers are restored on exit (SIG_DFL where the old one was installed outside Python).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self._signals = signals
        self._previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in self._signals:
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue
            self._previous[signum] = signal.signal(signum, self._raise)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    @staticmethod
    def _raise(signum: int, frame: FrameType | None) -> None:
        raise SignalTerminated(signum)


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


_HELD = {signal.SIGINT, signal.SIGTERM}


def _hold_signals() -> set | None:
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)


def _release_signals(previous: set | None) -> None:
    if previous is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block is done (delivered right after): for steps that must not be split."""
    held = _hold_signals()
    try:
        yield
    finally:
        _release_signals(held)


def commit_pair(data: _Stage | None, model: _Stage) -> None:
    """Rename a new data file and the model that reads it into place as one step.

    Signals are held across both renames. Should the model's rename still fail after the data file's, the
    old data file (kept as a hard link until then) is put back, so the old model never reads new data.
    """
    with signals_held():
        backup = _link_backup(data.destination) if data is not None else None
        try:
            if data is not None:
                data.commit()
            model.commit()
        except BaseException:
            if backup is not None and data is not None:  # (a backup exists only with data)
                os.replace(backup, data.destination)
                backup = None
            raise
        finally:
            if backup is not None:
                os.unlink(backup)


def _link_backup(path: Path) -> Path | None:
    if not path.exists():
        return None
    backup = path.with_name(f".{path.name}.{os.getpid()}.bak")
    try:
        os.link(path, backup)
    except OSError:
        return None  # no hard links here: fall back to the plain two renames
    return backup


@contextmanager
def staged(destination: Path) -> Iterator[_Stage]:
    """A temporary file beside ``destination``, removed on exit unless committed; OSError -> OutputWriteError."""
    # Signals are held while the temporary is created and its cleanup armed, so an interrupt can't land
    # between the two and leave a stray file behind.
    held = _hold_signals()
    try:
        try:
            fd, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
        except OSError as exc:
            raise _write_error(destination, exc) from None
        stage = _Stage(destination, Path(temporary), WritebackFile(os.fdopen(fd, "wb")))
    except BaseException:
        _release_signals(held)
        raise
    try:
        _release_signals(held)
        yield stage
    except OSError as exc:
        raise _write_error(destination, exc) from None
    finally:
        stage.discard()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` with a binary file that becomes ``path`` only if it returns normally.

    On an exception, KeyboardInterrupt or SIGTERM the temporary file is removed and ``path`` is untouched.
    OSErrors (from ``write`` too) become OutputWriteError naming the path and the reason.
    """
    path = Path(path)
    require_folder(path)
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
