"""action.yml: its run step, executed by bash as the runner would, runs bnfold and leaves the reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.builders import REPO
from tests.cli.cli_models import save_single

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_step() -> str:
    """The script of the step with id ``run`` (its ``run: |`` block, unindented)."""
    text = (REPO / "action.yml").read_text()
    block = text.split("      id: run\n", 1)[1].split("      run: |\n", 1)[1].split("\n    - ", 1)[0]
    return "\n".join(line[8:] for line in block.splitlines())


def invoke(tmp_path, **inputs: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "bnfold"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bnfold "$@"\n')
    shim.chmod(0o755)
    outputs = tmp_path / "github_output"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GITHUB_OUTPUT": str(outputs),
           "PYTHONPATH": str(REPO), "BNFOLD_OUTPUT": "folded", "BNFOLD_REPORTS": "reports", "BNFOLD_SHARD": "",
           "BNFOLD_ARGS": "--recursive --jobs 1", **{f"BNFOLD_{k.upper()}": v for k, v in inputs.items()}}
    outputs.write_text("")
    done = subprocess.run(["bash", "-c", run_step()], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    values = dict(line.split("=", 1) for line in outputs.read_text().splitlines())
    return done, values


def test_check_with_a_shard_writes_its_report_and_exit_code(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for i in range(3):
        save_single(models, f"m{i}.onnx")
    done, outputs = invoke(tmp_path, path="models", command="check", shard="1/2")
    assert done.returncode == int(outputs["exit-code"]) == 1, done.stderr  # foldable BatchNormalization left
    assert outputs["artifact"] == "bnfold-reports-1-of-2"
    assert json.loads((tmp_path / "reports" / "check-1-of-2.json").read_text())["shard"] == {"index": 1, "count": 2}


def test_optimize_a_folder_writes_models_and_reports(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    save_single(models, "m.onnx")
    done, outputs = invoke(tmp_path, path="models", command="optimize")
    assert done.returncode == 0 and outputs["exit-code"] == "0", done.stderr
    assert (tmp_path / "folded" / "m.onnx").is_file()
    assert json.loads((tmp_path / "reports" / "summary.json").read_text())["kind"] == "folder"


def test_an_unknown_command_is_a_usage_error(tmp_path):
    done, _ = invoke(tmp_path, path="x", command="fold")
    assert done.returncode == 2 and "command must be check or optimize" in done.stderr
