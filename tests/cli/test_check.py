"""The CI step: `bnfold optimize --check` on a file and a folder, `bnfold check FILES...`, the pre-commit hook."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from bnfold.cli.check import check_command
from bnfold.cli.main import cli
from bnfold.errors import ExitCode
from tests.builders import REPO, GraphBuilder
from tests.test_inspection import conv_bn_model

if "check" not in cli.commands:  # registered in bnfold/cli/main.py's COMMANDS; this keeps the tests independent
    cli.add_command(check_command)


def invoke(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def unfoldable_model() -> onnx.ModelProto:
    """A BatchNormalization on the graph input followed by Relu: nothing to fold it into, so checks pass."""
    b = GraphBuilder(seed=7)
    b.output(b.node("Relu", [b.bn(b.input("x", ["N", 3, 4, 4]), name="bn")]), shape=None)
    return b.build()


@pytest.fixture
def models_dir(tmp_path) -> Path:
    """raw.onnx (a foldable BN), folded.onnx (already folded), plain.onnx (a BN that cannot fold)."""
    folder = tmp_path / "models"
    folder.mkdir()
    onnx.save(conv_bn_model(), folder / "raw.onnx")
    assert invoke("optimize", folder / "raw.onnx", "-o", folder / "folded.onnx", "-q").exit_code == 0
    onnx.save(unfoldable_model(), folder / "plain.onnx")
    return folder


def test_optimize_check_on_one_file_both_ways(models_dir):
    before = snapshot(models_dir)
    failing = invoke("optimize", "--check", models_dir / "raw.onnx")
    assert failing.exit_code == ExitCode.FAILED
    assert failing.stderr.strip() == "Error: 1 foldable BatchNormalization remain (e.g. bn)"
    for name in ("folded.onnx", "plain.onnx"):
        passing = invoke("optimize", "--check", models_dir / name)
        assert passing.exit_code == 0, passing.output
        assert "Check passed: no foldable BatchNormalization remains." in passing.stdout
    assert snapshot(models_dir) == before  # --check writes nothing


def test_optimize_check_on_a_folder_both_ways(models_dir):
    before = snapshot(models_dir)
    failing = invoke("optimize", "--check", models_dir, "--jobs", "1")
    assert failing.exit_code == ExitCode.FAILED
    rows = {line.split()[0]: line for line in failing.stdout.splitlines()[1:-1]}
    assert rows["raw.onnx"].endswith("check failed: foldable BatchNormalization")
    assert rows["folded.onnx"].endswith(" ok") and rows["plain.onnx"].endswith(" ok")
    assert failing.stderr.strip() == "Error: raw.onnx: 1 foldable BatchNormalization remain (e.g. bn)"
    (models_dir / "raw.onnx").unlink()
    before.pop("raw.onnx")
    passing = invoke("optimize", "--check", models_dir, "--jobs", "1")
    assert passing.exit_code == 0, passing.output
    assert passing.stdout.splitlines()[-1] == "2 models: 2 ok, 0 failed"
    assert snapshot(models_dir) == before


def test_check_command_takes_many_files_like_pre_commit_passes_them(models_dir):
    clean = invoke("check", models_dir / "folded.onnx", models_dir / "plain.onnx")
    assert clean.exit_code == 0, clean.output
    assert clean.stdout.splitlines()[-1] == "Check passed: no foldable BatchNormalization remains."
    dirty = invoke("check", models_dir / "folded.onnx", models_dir / "raw.onnx", "-q")
    assert dirty.exit_code == ExitCode.FAILED and dirty.stdout == ""
    assert dirty.stderr.strip() == f"Error: {models_dir / 'raw.onnx'}: 1 foldable BatchNormalization remain (e.g. bn)"


def test_check_command_counts_only_the_chosen_rules_and_reads_folders(models_dir):
    assert invoke("check", models_dir / "raw.onnx", "--skip-rules", "conv_bn").exit_code == 0
    whole = invoke("check", models_dir, "--jobs", "1")
    assert whole.exit_code == ExitCode.FAILED
    assert whole.stdout.splitlines()[-1] == "3 models: 2 ok, 1 failed"


def test_check_command_reports_unreadable_files_and_needs_nothing(models_dir):
    assert invoke("check").exit_code == 0
    (models_dir / "empty").mkdir()
    empty = invoke("check", models_dir / "empty")
    assert empty.exit_code == ExitCode.MODEL_ERROR and "no .onnx models in" in empty.stderr
    missing = invoke("check", models_dir / "folded.onnx", models_dir / "gone.onnx")
    assert missing.exit_code == ExitCode.MODEL_ERROR
    assert "gone.onnx: " in missing.stderr and "does not exist" in missing.stderr


def _hook_fields() -> dict[str, str]:
    text = (REPO / ".pre-commit-hooks.yaml").read_text()
    return dict(re.findall(r"^\s*-?\s*(\w+):\s*(.+?)\s*$", text, flags=re.MULTILINE))


def test_pre_commit_hook_runs_a_registered_command_on_onnx_files_only():
    hook = _hook_fields()
    assert hook["id"] == "bnfold-check" and hook["language"] == "python"
    program, command = hook["entry"].split()
    assert program == "bnfold" and command in cli.commands
    files = re.compile(hook["files"])
    assert files.search("models/net.onnx") and not files.search("models/net.onnx.data")
    assert hook["require_serial"] == "true"
