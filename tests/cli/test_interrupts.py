"""Interrupting a real ``bnfold`` process (subprocesses, bounded waits): every SIGINT or SIGTERM ends the run with
one ``Error:`` line and exit 130, never a traceback or "internal error"; temporary folders go with it, and the
files it works on stay whole."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

import models
from tests.builders import REPO

TIMEOUT = 90


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bnfold", *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def wait_for(condition, process: subprocess.Popen, limit: float = 60) -> bool:
    """Poll ``condition`` until it holds (True) or the process ends or ``limit`` passes (False)."""
    deadline = time.monotonic() + limit
    while process.poll() is None and time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.001)
    return False


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=TIMEOUT)
    return process.returncode, stderr.decode()


def assert_one_line_interrupt(code: int, stderr: str) -> None:
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert code == 130 and len(errors) == 1 and errors[0] in (
        "Error: interrupted", "Error: terminated by SIGTERM"), (code, stderr)


def loaded(process: subprocess.Popen, library: str):
    """Whether the process has mapped a shared library whose path contains ``library``."""
    def check() -> bool:
        try:
            return library in Path(f"/proc/{process.pid}/maps").read_text()
        except OSError:
            return False
    return check


@pytest.fixture(scope="module")
def external_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("external")
    onnx.save_model(models.build("resnet18", large=True), folder / "m.onnx", save_as_external_data=True,
                    location="m.onnx.data")
    return folder / "m.onnx"


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_sigterm_during_verification_of_an_external_data_model_leaves_no_scratch_copy(
        external_model, tmp_path, delay):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    before = digest(external_model.with_name("m.onnx.data"))
    process = start(["optimize", str(external_model), "-o", str(tmp_path / "out.onnx"), "-q"],
                    env={"TMPDIR": str(scratch)})
    if wait_for(lambda: any(p.name.startswith("bnfold-verify-") for p in scratch.iterdir()), process):
        time.sleep(delay)
    sent = process.poll() is None
    if sent:
        process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    if sent and code != 0:
        assert_one_line_interrupt(code, stderr)
    assert [p.name for p in scratch.iterdir() if p.name.startswith("bnfold-")] == []
    assert digest(external_model.with_name("m.onnx.data")) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("delay", [0.0, 0.4])
def test_ctrl_c_during_start_up_imports_is_one_line_and_exit_130(tmp_path, delay, signum):
    source = tmp_path / "m.onnx"
    onnx.save(models.build("resnet18"), source)
    before = digest(source)
    process = start(["optimize", str(source), "--in-place", "-q"])
    wait_for(loaded(process, "numpy"), process)  # well inside bnfold's imports (numpy, then onnx)
    time.sleep(delay)
    if process.poll() is None:
        process.send_signal(signum)
    code, stderr = finish(process)
    if code != 0:
        assert_one_line_interrupt(code, stderr)
    assert digest(source) == before or code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("delay", [0.0, 0.02])
def test_ctrl_c_during_the_lazy_onnxruntime_import_is_an_interrupt_not_an_internal_error(tmp_path, delay):
    source = tmp_path / "m.onnx"
    onnx.save(models.build("resnet18"), source)
    process = start(["verify", str(source), str(source)])
    wait_for(loaded(process, "onnxruntime"), process)
    time.sleep(delay)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    code, stderr = finish(process)
    if code != 0:
        assert_one_line_interrupt(code, stderr)


def test_sigterm_in_folder_mode_stops_the_batch_instead_of_finishing_it(tmp_path):
    models_dir, out = tmp_path / "models", tmp_path / "out"
    models_dir.mkdir()
    for index in range(8):
        onnx.save(models.build("resnet18", seed=index), models_dir / f"m{index}.onnx")
    process = start(["optimize", str(models_dir), "-o", str(out), "--jobs", "2", "-q"])
    wait_for(lambda: out.is_dir() and any(p.suffix == ".onnx" for p in out.iterdir()), process, limit=120)
    if process.poll() is not None:
        pytest.skip("the batch finished before it could be interrupted")
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    assert_one_line_interrupt(code, stderr)
    written = sorted(p.name for p in out.iterdir())
    assert all(name.endswith(".onnx") for name in written) and len(written) < 8, written
    for name in written:
        onnx.checker.check_model(onnx.load(out / name))  # whatever was written is whole
