"""The installed console script and ``python -m bnfold`` start the real CLI in a fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from bnfold import __version__
from tests.builders import GraphBuilder, op_count

SCRIPT = Path(sys.executable).parent / "bnfold"


def conv_bn_relu() -> onnx.ModelProto:
    b = GraphBuilder(seed=4)
    x = b.input("x", [1, 3, 8, 8])
    b.output(b.node("Relu", [b.bn(b.conv(x, 4))]), shape=[1, 4, 6, 6])
    return b.build()


def test_console_script_optimizes_a_model(tmp_path):
    if not SCRIPT.exists():
        pytest.skip(f"no console script at {SCRIPT}: run `pip install -e .` in this environment")
    source = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu(), source)
    done = subprocess.run([str(SCRIPT), "optimize", str(source)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    target = tmp_path / "m.folded.onnx"
    assert op_count(onnx.load(target), "BatchNormalization") == 0
    assert "Verified:" in done.stdout and done.stderr == ""


def test_console_script_reports_errors_with_exit_codes(tmp_path):
    if not SCRIPT.exists():
        pytest.skip(f"no console script at {SCRIPT}: run `pip install -e .` in this environment")
    done = subprocess.run([str(SCRIPT), "optimize", str(tmp_path / "missing.onnx")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"Error: {tmp_path / 'missing.onnx'} does not exist"]


def test_python_dash_m_prints_the_version():
    done = subprocess.run([sys.executable, "-m", "bnfold", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    # the first line as click prints it; then what a bug report needs (issue 13: onnx, onnxruntime, providers)
    lines = done.stdout.strip().splitlines()
    assert lines[0] == f"bnfold, version {__version__}"
    assert any(line.startswith("onnx ") for line in lines)
    assert any(line.startswith("onnxruntime ") and "CPUExecutionProvider" in line for line in lines)
