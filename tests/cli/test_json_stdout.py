"""``--json -`` on every command: standard output is exactly one JSON document, human text goes to stderr;
``--json PATH`` writes the same document into a file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bnfold.cli.main import cli
from tests.cli.cli_models import save_single

FAST_BENCH = ["--warmup", "0", "--iterations", "2", "--opt-level", "disable"]


def argv_for(command: str, tmp_path: Path) -> list[str]:
    model = save_single(tmp_path, "m.onnx")
    other = save_single(tmp_path, "b.onnx")
    folder = tmp_path / "models"
    folder.mkdir()
    save_single(folder, "x.onnx"), save_single(folder, "y.onnx")
    return {
        "optimize": ["optimize", str(model), "-o", str(tmp_path / "out.onnx")],
        "verify": ["verify", str(model), str(other)],
        "inspect": ["inspect", str(model)],
        "check": ["check", str(model), str(other)],
        "bench": ["bench", str(model), *FAST_BENCH],
        "folder": ["optimize", str(folder), "-o", str(tmp_path / "folded"), "--jobs", "1"],
    }[command]


KINDS = ["optimize", "verify", "inspect", "check", "bench", "folder"]


@pytest.mark.parametrize("kind", KINDS)
def test_json_dash_puts_only_json_on_stdout(tmp_path, kind):
    argv = argv_for(kind, tmp_path)
    result = CliRunner().invoke(cli, [*argv, "--json", "-"])
    expected_code = 1 if kind == "check" else 0  # the check finds foldable BatchNormalization
    assert result.exit_code == expected_code, result.output
    document = json.loads(result.stdout)  # the whole of stdout parses: nothing else was printed there
    assert document["kind"] == kind
    assert result.stderr.strip(), "the human report moved to stderr, it did not vanish"
    assert not (tmp_path / "-").exists()  # not a file named '-'


@pytest.mark.parametrize("kind", KINDS)
def test_json_path_writes_the_report_and_keeps_stdout_human(tmp_path, kind):
    argv = argv_for(kind, tmp_path)
    target = tmp_path / ("reports" if kind == "folder" else "report.json")
    result = CliRunner().invoke(cli, [*argv, "--json", str(target)])
    assert result.exit_code == (1 if kind == "check" else 0), result.output
    document = json.loads((target / "summary.json" if kind == "folder" else target).read_text())
    assert document["kind"] == kind
    assert result.stdout.strip() and not result.stdout.lstrip().startswith("{")


def test_folder_json_dash_embeds_each_models_report(tmp_path):
    result = CliRunner().invoke(cli, [*argv_for("folder", tmp_path), "--json", "-"])
    document = json.loads(result.stdout)
    assert [entry["model"] for entry in document["models"]] == ["x.onnx", "y.onnx"]
    assert all(entry["report"]["kind"] == "optimize" for entry in document["models"])


def test_quiet_with_json_dash_still_writes_the_json(tmp_path):
    result = CliRunner().invoke(cli, [*argv_for("optimize", tmp_path), "--json", "-", "-q"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["kind"] == "optimize" and result.stderr == ""


def test_json_dash_in_a_real_process_is_pipeable(tmp_path):
    """A real subprocess (stdout a pipe, onnxruntime loaded): stdout parses as JSON, nothing else on it."""
    model = save_single(tmp_path)
    done = subprocess.run([sys.executable, "-m", "bnfold", "optimize", str(model), "-o", str(tmp_path / "o.onnx"),
                           "--json", "-"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["kind"] == "optimize" and document["versions"]["onnxruntime"]
    assert "Verified" in done.stderr


def test_a_model_that_cannot_be_read_still_gets_a_json_error_document(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    result = CliRunner().invoke(cli, ["optimize", str(broken), "--json", "-"])
    assert result.exit_code == 3
    document = json.loads(result.stdout)
    assert document["kind"] == "optimize" and document["exit_code"] == 3 and document["error"]
    assert result.stderr.startswith("Error:")
