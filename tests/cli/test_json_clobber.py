"""Issue 14 item 1: ``--json`` must never replace a model, an output or an external data file.

Each case spells the report path as one of the files in use (as given, relative, through ``..``, a symbolic
link, a hard link) and expects exit 2, one ``Error:`` line naming the clash, and not one byte changed or
added in the folder (the output is not written either).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from bnfold.cli.main import cli
from tests.cli.cli_models import save_external, save_single, snapshot

FAST_BENCH = ["--warmup", "0", "--iterations", "1", "--opt-level", "disable"]


def spell(tmp_path: Path, target: Path, spelling: str) -> str:
    """*target* written another way: as given, relative to the working folder (tmp_path), via '..', a
    symbolic link, a hard link (a link to a file that does not exist yet is dangling on purpose)."""
    if spelling == "plain":
        return str(target)
    if spelling == "relative":
        return os.path.relpath(target, tmp_path)
    if spelling == "dotdot":
        (tmp_path / "sub").mkdir(exist_ok=True)
        return str(tmp_path / "sub" / ".." / target.relative_to(tmp_path))
    link = tmp_path / f"report-{spelling}.json"
    if spelling == "symlink":
        link.symlink_to(target)
    else:
        os.link(target, link)
    return str(link)


SPELLINGS = ["plain", "relative", "dotdot", "symlink", "hardlink"]


def refused(tmp_path: Path, monkeypatch, argv: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--json" in errors[0] and "would replace it" in errors[0], result.stderr
    assert result.stdout == ""
    assert snapshot(tmp_path) == before  # nothing written, nothing replaced, no output created


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_optimize_json_over_the_input_is_refused(tmp_path, monkeypatch, spelling):
    model = save_single(tmp_path)
    refused(tmp_path, monkeypatch, ["optimize", str(model), "-o", str(tmp_path / "out.onnx"),
                                    "--json", spell(tmp_path, model, spelling)])


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_optimize_json_over_the_existing_output_is_refused(tmp_path, monkeypatch, spelling):
    model, out = save_single(tmp_path), save_single(tmp_path, "out.onnx")
    refused(tmp_path, monkeypatch, ["optimize", str(model), "-o", str(out), "--json", spell(tmp_path, out, spelling)])


@pytest.mark.parametrize("spelling", ["plain", "relative", "dotdot", "symlink"])
def test_optimize_json_over_the_output_yet_to_be_written_is_refused(tmp_path, monkeypatch, spelling):
    model, out = save_single(tmp_path), tmp_path / "out.onnx"
    refused(tmp_path, monkeypatch, ["optimize", str(model), "-o", str(out), "--json", spell(tmp_path, out, spelling)])


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_optimize_json_over_the_inputs_data_file_is_refused(tmp_path, monkeypatch, spelling):
    model, data = save_external(tmp_path, data="weights.bin")
    refused(tmp_path, monkeypatch, ["optimize", str(model), "-o", str(tmp_path / "out.onnx"),
                                    "--json", spell(tmp_path, data, spelling)])


def test_optimize_json_over_the_outputs_data_file_is_refused(tmp_path, monkeypatch):
    model, _ = save_external(tmp_path)
    out = tmp_path / "out.onnx"
    refused(tmp_path, monkeypatch, ["optimize", str(model), "-o", str(out), "--json", str(out) + ".data"])


def test_in_place_json_over_the_model_is_refused(tmp_path, monkeypatch):
    model = save_single(tmp_path)
    refused(tmp_path, monkeypatch, ["optimize", str(model), "--in-place", "--json", spell(tmp_path, model, "symlink")])


def test_check_mode_json_over_the_model_is_refused(tmp_path, monkeypatch):
    model = save_single(tmp_path)
    refused(tmp_path, monkeypatch, ["optimize", str(model), "--check", "--json", str(model)])


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_inspect_json_over_the_model_is_refused(tmp_path, monkeypatch, spelling):
    model = save_single(tmp_path)
    refused(tmp_path, monkeypatch, ["inspect", str(model), "--json", spell(tmp_path, model, spelling)])


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_verify_json_over_the_candidate_is_refused(tmp_path, monkeypatch, spelling):
    reference, candidate = save_single(tmp_path, "a.onnx"), save_single(tmp_path, "b.onnx")
    refused(tmp_path, monkeypatch, ["verify", str(reference), str(candidate),
                                    "--json", spell(tmp_path, candidate, spelling)])


def test_verify_json_over_the_references_data_file_is_refused(tmp_path, monkeypatch):
    reference, data = save_external(tmp_path, "a.onnx")
    candidate = save_single(tmp_path, "b.onnx")
    refused(tmp_path, monkeypatch, ["verify", str(reference), str(candidate),
                                    "--json", spell(tmp_path, data, "hardlink")])


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_bench_json_over_the_model_is_refused(tmp_path, monkeypatch, spelling):
    model = save_single(tmp_path)
    refused(tmp_path, monkeypatch, ["bench", str(model), *FAST_BENCH, "--json", spell(tmp_path, model, spelling)])


def test_bench_json_over_the_compared_model_is_refused(tmp_path, monkeypatch):
    model, other = save_single(tmp_path, "a.onnx"), save_single(tmp_path, "b.onnx")
    refused(tmp_path, monkeypatch, ["bench", str(model), "--compare", str(other), *FAST_BENCH, "--json", str(other)])


def test_check_json_over_a_checked_model_is_refused(tmp_path, monkeypatch):
    model = save_single(tmp_path)
    refused(tmp_path, monkeypatch, ["check", str(tmp_path), "--json", spell(tmp_path, model, "hardlink")])


def test_folder_report_over_a_data_file_named_like_it_is_refused(tmp_path, monkeypatch):
    """JSONDIR/<model>.json is the very data file a model of the folder reads."""
    save_external(tmp_path, "a.onnx", data="a.onnx.json")
    refused(tmp_path, monkeypatch, ["optimize", str(tmp_path), "-o", str(tmp_path / "out"), "--json", str(tmp_path)])


def test_folder_report_through_a_symlink_to_a_model_is_refused(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    model = save_single(models, "a.onnx")
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "a.onnx.json").symlink_to(model)
    refused(tmp_path, monkeypatch, ["optimize", str(models), "--check", "--json", str(reports)])


def test_folder_summary_over_a_data_file_is_refused(tmp_path, monkeypatch):
    save_external(tmp_path, "a.onnx", data="summary.json")
    refused(tmp_path, monkeypatch, ["optimize", str(tmp_path), "--in-place", "--json", str(tmp_path)])


def test_a_report_beside_the_model_is_still_written(tmp_path):
    """The refusal is exact: a new name in the model's folder is fine (and external data is left alone)."""
    model, data = save_external(tmp_path)
    report = tmp_path / "m.onnx.json"
    result = CliRunner().invoke(cli, ["optimize", str(model), "-o", str(tmp_path / "out.onnx"), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert report.read_text().lstrip().startswith("{") and data.is_file()


def test_folder_report_over_another_models_file_is_refused(tmp_path, monkeypatch):
    """The report of a.onnx, a link to b.onnx: each report is checked against every model of the batch."""
    models = tmp_path / "models"
    models.mkdir()
    save_single(models, "a.onnx")
    other = save_single(models, "b.onnx")
    reports = tmp_path / "reports"
    reports.mkdir()
    os.link(other, reports / "a.onnx.json")
    refused(tmp_path, monkeypatch, ["optimize", str(models), "--check", "--json", str(reports)])


@pytest.mark.parametrize("command", ["optimize", "verify"])
def test_json_over_the_inputs_file_is_refused(tmp_path, monkeypatch, command):
    import numpy as np

    model = save_single(tmp_path)
    feeds = tmp_path / "x.npz"
    np.savez(feeds, x=np.zeros((1, 3, 8, 8), np.float32))
    argv = ["optimize", str(model), "-o", str(tmp_path / "o.onnx")] if command == "optimize" else [
        "verify", str(model), str(model)]
    refused(tmp_path, monkeypatch, [*argv, "--inputs", str(feeds), "--json", spell(tmp_path, feeds, "symlink")])
