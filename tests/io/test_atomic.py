"""``io.atomic`` clean-ups against a signal landing inside them: the temporary goes all the same."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from bnfold.io import model_file as io
from bnfold.io.writeback import WritebackFile


def test_a_sigterm_between_closing_the_temporary_and_removing_it_still_removes_it(
        tmp_path: Path, monkeypatch, sigterm_recorded) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old model")
    closes: list[int] = []

    def close_then_signal(self) -> None:
        self._raw.close()
        closes.append(1)
        if len(closes) == 1:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(WritebackFile, "close", close_then_signal, raising=False)

    def failing(handle) -> None:
        handle.write(b"half")
        raise ValueError("the write fails")

    with pytest.raises(io.SignalTerminated):
        io.atomic_write(target, failing)
    assert closes and sigterm_recorded == []
    assert target.read_bytes() == b"old model" and sorted(os.listdir(tmp_path)) == ["m.onnx"]
