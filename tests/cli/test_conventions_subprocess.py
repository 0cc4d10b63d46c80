"""One real ``python -m bnfold`` process per convention (the CliRunner tests cover the cases)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx

from tests.cli.cli_models import digest, dynamic_model, save_single, wide_model


def bnfold(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnfold", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_json_over_the_input_through_a_hard_link_is_refused(tmp_path):
    model = save_single(tmp_path)
    os.link(model, tmp_path / "r.json")
    before = digest(model)
    done = bnfold("optimize", model, "-o", tmp_path / "o.onnx", "--json", tmp_path / "r.json")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("Error:") == 1 and digest(model) == before and not (tmp_path / "o.onnx").exists()


def test_bare_input_shape_and_quiet(tmp_path):
    model = save_single(tmp_path, model=dynamic_model())
    done = bnfold("verify", model, model, "--input-shape", "2,3,16,16", "-q", "--json", tmp_path / "v.json")
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    assert json.loads((tmp_path / "v.json").read_text())["inputs"][0]["shape"] == [2, 3, 16, 16]


def test_save_as_external_data(tmp_path):
    model = save_single(tmp_path, model=wide_model())
    done = bnfold("optimize", model, "-o", tmp_path / "o.onnx", "--save-as-external-data", "-v")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o.onnx.data").is_file() and "KiB" in done.stdout
    onnx.checker.check_model(str(tmp_path / "o.onnx"))
