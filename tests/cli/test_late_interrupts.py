"""A signal that lands once ``bnfold optimize`` has renamed its only output into place is too late to stop
anything: the run ends as it would have a moment later (exit 0, the usual report), never "interrupted" over a
file it did replace. A signal before the rename still interrupts (tests/cli/test_nothing_lost.py)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import models
from bnfold.cli.main import cli
from tests.builders import op_count


def signal_after_rename(monkeypatch, which: int, signum: int = signal.SIGINT) -> list[str]:
    """The *which*-th rename (1-based) happens, then *signum* is delivered to this process."""
    real_replace, renamed = os.replace, []

    def replace_then_signal(src, dst):
        real_replace(src, dst)
        renamed.append(str(dst))
        if len(renamed) == which:
            signal.raise_signal(signum)

    monkeypatch.setattr(os, "replace", replace_then_signal)
    return renamed


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(models.build("resnet18"), path)
    return path


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_right_after_the_in_place_rename_is_dropped(source, monkeypatch, signum):
    renamed = signal_after_rename(monkeypatch, 1, signum)
    result = CliRunner().invoke(cli, ["optimize", str(source), "--in-place", "--no-verify"])
    assert result.exit_code == 0, result.output
    assert renamed == [str(source)] and "Error" not in result.output
    assert op_count(onnx.load(source), "BatchNormalization") == 0
    assert sorted(p.name for p in source.parent.iterdir()) == ["m.onnx"]


def test_a_signal_held_across_the_external_data_pair_is_dropped_once_both_are_renamed(tmp_path, monkeypatch):
    source = tmp_path / "m.onnx"
    onnx.save_model(models.build("resnet18"), source, save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    renamed = signal_after_rename(monkeypatch, 1)  # lands between the data file's rename and the model's
    result = CliRunner().invoke(cli, ["optimize", str(source), "--in-place", "--no-verify", "-q"])
    assert result.exit_code == 0, result.output
    assert renamed == [str(tmp_path / "m.onnx.data"), str(source)]
    assert op_count(onnx.load(source), "BatchNormalization") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_the_late_signal_still_lets_the_json_report_be_written(source, tmp_path, monkeypatch):
    report = tmp_path / "r.json"
    signal_after_rename(monkeypatch, 1)
    result = CliRunner().invoke(cli, ["optimize", str(source), "-o", str(tmp_path / "out.onnx"), "--no-verify",
                                      "-q", "--json", str(report)])
    assert result.exit_code == 0, result.output
    document = json.loads(report.read_text())
    assert document["kind"] == "optimize" and len(document["applied"]) == 20, document.keys()


def test_handlers_are_back_once_the_command_is_over(source, monkeypatch):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal_after_rename(monkeypatch, 1)
    assert CliRunner().invoke(cli, ["optimize", str(source), "--in-place", "--no-verify", "-q"]).exit_code == 0
    assert {s: signal.getsignal(s) for s in before} == before


def test_in_folder_mode_a_signal_after_one_models_rename_still_stops_the_run(tmp_path, monkeypatch):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for name in ("a", "b"):
        onnx.save(models.build("resnet18"), folder / f"{name}.onnx")
    renamed = signal_after_rename(monkeypatch, 1)
    result = CliRunner().invoke(cli, ["optimize", str(folder), "-o", str(out), "--no-verify", "-q",
                                      "--jobs", "1"])
    assert result.exit_code == 130, result.output
    assert len(renamed) == 1 and [p.name for p in out.iterdir() if p.suffix == ".onnx"] == [Path(renamed[0]).name]
