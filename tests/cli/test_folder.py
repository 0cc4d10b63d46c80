"""`bnfold optimize DIR`: every model folded into OUTDIR, one bad model never stops the rest, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from bnfold.cli.folder import batch_exit_code, discover_models
from bnfold.cli.main import cli
from bnfold.errors import ExitCode
from tests.builders import assert_equivalent, op_count
from tests.test_inspection import conv_bn_model

CORRUPT = b"\x08\x07 truncated, not an ONNX protobuf"


def invoke(*args):
    return CliRunner().invoke(cli, ["optimize", *map(str, args)])


def bn_count(path: Path) -> int:
    return op_count(onnx.load(path), "BatchNormalization")


def summary_rows(result) -> dict[str, list[str]]:
    """Summary table rows keyed by model (stdout lines below the header, before the count line)."""
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["model", "BN", "before"])
    return {line.split()[0]: line.split()[1:] for line in lines[header + 1:-1]}


@pytest.fixture
def folder(tmp_path) -> Path:
    """a.onnx, b.onnx (corrupt, in the middle), c.onnx, and sub/d.onnx one level down."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    onnx.save(conv_bn_model(seed=1), src / "a.onnx")
    (src / "b.onnx").write_bytes(CORRUPT)
    onnx.save(conv_bn_model(seed=2, c=6), src / "c.onnx")
    onnx.save(conv_bn_model(seed=3), src / "sub" / "d.onnx")
    return src


def test_a_corrupt_model_in_the_middle_fails_alone(folder, tmp_path):
    out = tmp_path / "out"
    result = invoke(folder, "-o", out, "--jobs", "1")
    assert result.exit_code == ExitCode.MODEL_ERROR, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.onnx", "c.onnx"]  # OUTDIR created; no sub/ without -r
    for name in ("a.onnx", "c.onnx"):
        assert bn_count(out / name) == 0
        assert_equivalent(onnx.load(folder / name), onnx.load(out / name))
    rows = summary_rows(result)
    assert list(rows) == ["a.onnx", "b.onnx", "c.onnx"]
    assert rows["a.onnx"][:3] == ["1", "0", "passed"] and rows["a.onnx"][-1] == "ok"
    assert rows["b.onnx"][:3] == ["-", "-", "-"] and " ".join(rows["b.onnx"][-4:]) == "model error (exit 3)"
    assert result.stdout.splitlines()[-1] == "3 models: 2 ok, 1 failed"
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: b.onnx: not an ONNX model")


def test_two_worker_processes_give_the_same_bytes_as_one(folder, tmp_path):
    serial, pooled = tmp_path / "serial", tmp_path / "pooled"
    assert invoke(folder, "-o", serial, "--jobs", "1", "-q").exit_code == ExitCode.MODEL_ERROR
    result = invoke(folder, "-o", pooled, "--jobs", "2")
    assert result.exit_code == ExitCode.MODEL_ERROR, result.output
    assert list(summary_rows(result)) == ["a.onnx", "b.onnx", "c.onnx"]
    for name in ("a.onnx", "c.onnx"):
        assert (pooled / name).read_bytes() == (serial / name).read_bytes()
    assert not (pooled / "b.onnx").exists()


def test_recursive_keeps_relative_paths_and_writes_json_per_model(folder, tmp_path):
    (folder / "b.onnx").unlink()
    out, reports = tmp_path / "out", tmp_path / "reports"
    result = invoke(folder, "-o", out, "--recursive", "--json", reports, "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert bn_count(out / "sub" / "d.onnx") == 0
    assert list(summary_rows(result)) == ["a.onnx", "c.onnx", "sub/d.onnx"]
    report = json.loads((reports / "sub" / "d.onnx.json").read_text())
    assert [a["rule"] for a in report["applied"]] == ["conv_bn"]
    summary = json.loads((reports / "summary.json").read_text())
    assert summary["exit_code"] == 0
    assert [(m["model"], m["bn_before"], m["bn_after"], m["report"]) for m in summary["models"]] == [
        ("a.onnx", 1, 0, "a.onnx.json"), ("c.onnx", 1, 0, "c.onnx.json"), ("sub/d.onnx", 1, 0, "sub/d.onnx.json")]


def test_json_for_a_failed_model_is_an_error_document(folder, tmp_path):
    reports = tmp_path / "reports"
    result = invoke(folder, "-o", tmp_path / "out", "--json", reports, "--jobs", "1", "-q")
    assert result.exit_code == ExitCode.MODEL_ERROR
    assert result.stdout == ""  # -q: errors only, on stderr
    error = json.loads((reports / "b.onnx.json").read_text())
    assert error["exit_code"] == 3 and "not an ONNX model" in error["error"]
    assert json.loads((reports / "summary.json").read_text())["exit_code"] == 3


def test_output_folder_is_required_and_must_differ_from_the_source(folder):
    missing = invoke(folder)
    assert missing.exit_code == ExitCode.USAGE and "pass -o OUTDIR" in missing.stderr
    same = invoke(folder, "-o", folder)
    assert same.exit_code == ExitCode.USAGE and "--in-place" in same.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["a.onnx", "b.onnx", "c.onnx", "sub"]


def test_outdir_is_created_only_inside_an_existing_folder(folder, tmp_path):
    result = invoke(folder, "-o", tmp_path / "no" / "such" / "out")
    assert result.exit_code == ExitCode.OUTPUT_ERROR
    assert result.stderr.startswith("Error: cannot create") and not (tmp_path / "no").exists()


def test_in_place_rewrites_every_model_in_the_folder(folder):
    (folder / "b.onnx").unlink()
    result = invoke(folder, "--in-place", "--recursive", "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert [bn_count(folder / name) for name in ("a.onnx", "c.onnx", "sub/d.onnx")] == [0, 0, 0]


def test_external_data_models_get_their_data_file_beside_the_output(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    onnx.save(conv_bn_model(seed=5, c=16), src / "ext.onnx", save_as_external_data=True, location="ext.weights",
              size_threshold=256)
    result = invoke(src, "-o", out, "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["ext.onnx", "ext.onnx.data"]
    folded = onnx.load(out / "ext.onnx")
    assert op_count(folded, "BatchNormalization") == 0
    assert_equivalent(conv_bn_model(seed=5, c=16), folded)


def test_hidden_entries_and_an_outdir_inside_the_source_are_skipped(folder):
    (folder / "b.onnx").unlink()
    (folder / ".cache").mkdir()
    onnx.save(conv_bn_model(), folder / ".cache" / "hidden.onnx")
    out = folder / "folded"
    assert invoke(folder, "-o", out, "--recursive", "-q").exit_code == 0
    again = invoke(folder, "-o", out, "--recursive")
    assert again.exit_code == 0, again.output
    assert list(summary_rows(again)) == ["a.onnx", "c.onnx", "sub/d.onnx"]
    assert discover_models(folder, recursive=True) == [folder / "a.onnx", folder / "c.onnx",
                                                       folder / "folded" / "a.onnx", folder / "folded" / "c.onnx",
                                                       folder / "folded" / "sub" / "d.onnx", folder / "sub" / "d.onnx"]


def test_a_folder_without_models_is_one_error_and_creates_nothing(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    onnx.save(conv_bn_model(), tmp_path / "empty" / "sub" / "deeper.onnx")
    result = invoke(tmp_path / "empty", "-o", tmp_path / "out")
    assert result.exit_code == ExitCode.MODEL_ERROR
    hint = "(add --recursive to search subfolders)"
    assert result.stderr.strip() == f"Error: no .onnx models in {tmp_path / 'empty'} {hint}"
    assert not (tmp_path / "out").exists()


def test_an_unknown_rule_is_one_usage_error_for_the_whole_folder(folder, tmp_path):
    result = invoke(folder, "-o", tmp_path / "out", "--rules", "nope")
    assert result.exit_code == ExitCode.USAGE
    assert len(result.stderr.strip().splitlines()) == 1 and "unknown rule" in result.stderr


def test_failed_verification_outranks_other_failures():
    assert batch_exit_code([0, 0]) == 0
    assert batch_exit_code([]) == 0
    assert batch_exit_code([0, 4, 3, 1, 2]) == ExitCode.FAILED
    assert batch_exit_code([4, 0, 3]) == ExitCode.MODEL_ERROR
    assert batch_exit_code([2, 4]) == ExitCode.OUTPUT_ERROR
    assert batch_exit_code([0, 2]) == ExitCode.USAGE


def test_a_model_failing_verification_is_exit_1_and_the_others_are_written(tmp_path, monkeypatch):
    """A fold made wrong on purpose (its folded constants scaled by 1.5, in one model only) fails verification."""
    from bnfold.fold.rules import conv_bn

    original = conv_bn.RULE.match

    def sabotaged(g, node):
        plan = original(g, node)
        if hasattr(plan, "constants") and node.name == "bn" and "poison" in g.graph.name:
            plan.constants = {slot: (value * np.float32(1.5), role) for slot, (value, role) in plan.constants.items()}
        return plan

    monkeypatch.setattr(conv_bn.RULE, "match", sabotaged)
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(conv_bn_model(seed=1), src / "a.onnx")
    poisoned = conv_bn_model(seed=2)
    poisoned.graph.name = "poison"
    onnx.save(poisoned, src / "p.onnx")
    result = invoke(src, "-o", tmp_path / "out", "--jobs", "1", "--no-revert")
    assert result.exit_code == ExitCode.FAILED, result.output
    rows = summary_rows(result)
    assert rows["p.onnx"][2] == "failed" and " ".join(rows["p.onnx"][-2:]) == "verification failed"
    assert rows["a.onnx"][-1] == "ok" and (tmp_path / "out" / "a.onnx").exists()
    assert not (tmp_path / "out" / "p.onnx").exists()
