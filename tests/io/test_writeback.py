"""WritebackFile: the bytes written are exactly what a plain file gets, and writeback starts as the file grows."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from bnfold.io import writeback
from bnfold.io.atomic import atomic_write
from bnfold.io.writeback import WritebackFile

PIECES = [np.random.default_rng(i).bytes(3000 + 17 * i) for i in range(40)]


def _write_with_patch(handle) -> None:
    """Like the model streamer: a placeholder, the pieces, then a seek back to fill the placeholder in."""
    handle.write(b"LEN?")
    for piece in PIECES:
        handle.write(piece)
    end = handle.tell()
    handle.seek(0)
    handle.write(end.to_bytes(4, "little"))
    handle.seek(end)


@pytest.fixture
def kicks(monkeypatch) -> list[tuple[int, int, int, int]]:
    """Record each writeback request (then make the real call, where the platform has it)."""
    calls: list[tuple[int, int, int, int]] = []
    real = writeback.sync_file_range

    def record(fd: int, offset: int, nbytes: int, flags: int) -> int:
        calls.append((fd, offset, nbytes, flags))
        return real(fd, offset, nbytes, flags) if real is not None else 0

    monkeypatch.setattr(writeback, "sync_file_range", record)
    monkeypatch.setattr(writeback, "KICK_BYTES", 20_000)
    return calls


def test_bytes_are_those_of_a_plain_file_and_writeback_is_requested(tmp_path, kicks):
    plain, wrapped = tmp_path / "plain.bin", tmp_path / "wrapped.bin"
    with open(plain, "wb") as handle:
        _write_with_patch(handle)
    with open(wrapped, "wb") as raw:
        handle = WritebackFile(raw)
        _write_with_patch(handle)
        handle.flush()
        os.fsync(handle.fileno())
    assert wrapped.read_bytes() == plain.read_bytes()
    total = sum(map(len, PIECES)) + 8
    assert len(kicks) == total // 20_000  # one request per 20 000 new bytes
    assert all(flags == 2 and offset == 0 and nbytes == 0 for _, offset, nbytes, flags in kicks)


def test_atomic_writes_go_through_it(tmp_path, kicks):
    target = tmp_path / "out.bin"
    atomic_write(target, _write_with_patch)
    assert target.stat().st_size == sum(map(len, PIECES)) + 4 and len(kicks) >= 5
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_without_the_system_call_writes_still_pass_through(tmp_path, monkeypatch):
    monkeypatch.setattr(writeback, "sync_file_range", None)
    monkeypatch.setattr(writeback, "KICK_BYTES", 1000)
    target = tmp_path / "out.bin"
    atomic_write(target, _write_with_patch)
    with open(target, "rb") as handle:
        assert int.from_bytes(handle.read(4), "little") == target.stat().st_size


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux-only")
def test_the_linux_call_is_found():
    assert writeback.sync_file_range is not None
