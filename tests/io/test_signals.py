"""``io.signals.SignalGuard`` on exit: the old handlers back, or (``then_ignore``) the signals ignored for good."""

from __future__ import annotations

import signal

import pytest

from bnfold.io.signals import SignalGuard


@pytest.fixture
def handlers_kept():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield before
    for signum, handler in before.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("then_ignore", [False, True])
def test_the_guard_restores_or_leaves_the_signals_ignored(handlers_kept, then_ignore):
    with SignalGuard((signal.SIGINT, signal.SIGTERM), then_ignore=then_ignore):
        assert signal.getsignal(signal.SIGINT) not in (handlers_kept[signal.SIGINT], signal.SIG_IGN)
    after = {s: signal.getsignal(s) for s in handlers_kept}
    assert after == ({s: signal.SIG_IGN for s in handlers_kept} if then_ignore else handlers_kept)
    if then_ignore:
        signal.raise_signal(signal.SIGINT)  # ignored: no KeyboardInterrupt
