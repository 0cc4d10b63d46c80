"""Nothing silently left out or left behind (issue 14, "Also"): folder mode reports ``.onnx`` symlink loops as
failed rows, and ``--in-place`` on a model whose data file is not ``<model>.onnx.data`` says that the old data
file is no longer used (it is not deleted: another model may read it)."""

from __future__ import annotations

import os

import onnx
from click.testing import CliRunner

from bnfold.cli.main import cli
from bnfold.io.model_file import load_model, uses_external_data
from tests.builders import GraphBuilder, op_count


def conv_bn() -> onnx.ModelProto:
    b = GraphBuilder(seed=9)
    b.output(b.bn(b.conv(b.input("x", [1, 3, 8, 8]), 16)), shape=[1, 16, 6, 6])
    return b.build()


def test_folder_mode_reports_symlink_loops(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    onnx.save(conv_bn(), models / "good.onnx")
    os.symlink("self.onnx", models / "self.onnx")
    os.symlink("b.onnx", models / "a.onnx")
    os.symlink("a.onnx", models / "b.onnx")
    result = CliRunner().invoke(cli, ["optimize", str(models), "-o", str(tmp_path / "out"), "--no-verify",
                                      "--jobs", "1"])
    assert result.exit_code == 3, result.output
    errors = sorted(line for line in result.stderr.splitlines() if line.startswith("Error:"))
    assert [line.split(":")[1].strip() for line in errors] == ["a.onnx", "b.onnx", "self.onnx"], errors
    assert all("symbolic links" in line for line in errors), errors
    assert "4 models: 1 ok, 3 failed" in result.stdout, result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.onnx"]


def test_in_place_names_an_old_data_file_it_no_longer_uses(tmp_path):
    source = tmp_path / "m.onnx"
    onnx.save_model(conv_bn(), source, save_as_external_data=True, location="weights.bin", size_threshold=0)
    result = CliRunner().invoke(cli, ["optimize", str(source), "--in-place"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert warnings == ["Warning: weights.bin no longer used by m.onnx (its tensors are now in m.onnx.data); "
                        "delete it unless another model reads it"], result.stderr
    assert (tmp_path / "weights.bin").exists()  # kept: bnfold can't know what else reads it
    assert uses_external_data(source) and op_count(load_model(source), "BatchNormalization") == 0


def test_in_place_with_the_usual_data_file_name_says_nothing(tmp_path):
    source = tmp_path / "m.onnx"
    onnx.save_model(conv_bn(), source, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    result = CliRunner().invoke(cli, ["optimize", str(source), "--in-place"])
    assert result.exit_code == 0 and "Warning" not in result.stderr, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
