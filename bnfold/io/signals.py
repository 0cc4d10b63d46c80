"""Termination signals while files are written: unwound as exceptions, or held back while a step must not split.

``SignalGuard`` turns SIGTERM (and optionally SIGINT) into ``SignalTerminated``, a KeyboardInterrupt, so that
``finally`` clean-ups run instead of the process dying with its temporary files in place.

``deferred_signals`` is for the few steps that must never be cut in two (creating a temporary and arming its
cleanup; renaming a data file and its model into place). Blocking signals in the main thread is not enough:
the kernel then hands a SIGTERM to another thread (onnxruntime's pool, say), and Python still runs its handler
in the main thread at the next bytecode, inside the step. So while the step runs, SIGINT and SIGTERM get a
handler that only records them; when the step is over the previous handlers come back and a recorded signal
is raised again, to be handled exactly as it would have been, after the step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["SignalGuard", "SignalTerminated", "deferred_signals", "ignore_termination_signals"]

_DEFERRED = (signal.SIGINT, signal.SIGTERM)


class SignalTerminated(KeyboardInterrupt):
    """A termination signal, raised as KeyboardInterrupt so ``finally`` clean-ups run."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


class SignalGuard:
    """While active, the given signals raise an exception in the main thread instead of killing the process.

    SIGTERM raises ``SignalTerminated``; SIGINT (when listed) raises a plain KeyboardInterrupt. ``received``
    holds the last signal seen, so a caller can tell an error caused by an interrupt (an import cut short
    turns into ImportError, say) from a real one. Installed only in the main thread (the only place Python
    allows handlers); a signal the process ignores stays ignored. The previous handlers are restored on exit
    (SIG_DFL where the old one was installed outside Python); with ``then_ignore`` the signals are ignored
    from then on instead (for a process whose work ends with the guard: no gap where a late signal could
    still interrupt what is left).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,), *, then_ignore: bool = False) -> None:
        self._signals = signals
        self._then_ignore = then_ignore  # on exit, ignore the signals instead of restoring the old handlers
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | signal.Handlers | None] = {}
        self.received: int | None = None

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
            restored = signal.SIG_IGN if self._then_ignore else signal.SIG_DFL if previous is None else previous
            signal.signal(signum, restored)
        self._previous.clear()

    def _raise(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SignalTerminated(signum)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT/SIGTERM arriving inside the block take effect right after it, never inside it (any thread).

    Off the main thread (where no handler can be installed) only the calling thread's mask is changed.
    """
    if threading.current_thread() is not threading.main_thread():
        held = _block()
        try:
            yield
        finally:
            _unblock(held)
        return
    pending: list[int] = []
    previous = {}
    held = _block()
    try:
        for signum in _DEFERRED:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, lambda number, frame: pending.append(number))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        _unblock(held)
        for number in dict.fromkeys(pending):  # each signal once, in order of arrival
            signal.raise_signal(number)


def _block() -> set | None:
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, set(_DEFERRED))


def _unblock(previous: set | None) -> None:
    if previous is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_termination_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on: for a run whose result is in place, where a signal could only cut
    the reporting short, or the interpreter's shutdown (which resets Python's handlers first, so the process
    would die silently). An enclosing ``SignalGuard`` still restores its previous handlers when it exits,
    unless made with ``then_ignore``."""
    for signum in _DEFERRED:
        signal.signal(signum, signal.SIG_IGN)
