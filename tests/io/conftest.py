"""Fixtures shared by the io tests."""

from __future__ import annotations

import signal

import pytest


@pytest.fixture
def sigterm_recorded():
    """A recording SIGTERM handler: should a guard fail, the signal is recorded instead of killing pytest."""
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    yield received
    signal.signal(signal.SIGTERM, previous)
