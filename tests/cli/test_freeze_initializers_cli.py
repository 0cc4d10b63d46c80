"""`bnfold optimize --freeze-initializers`: weights listed as graph inputs (IR >= 4) are refused without it,
taken out of the inputs and folded with it; the text and JSON reports name the inputs removed."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from bnfold.cli.main import cli
from tests.builders import GraphBuilder, assert_equivalent, op_count


@pytest.fixture
def torch_style(tmp_path) -> Path:
    """Conv -> BN with every weight also a graph input, as keep_initializers_as_inputs=True exports it."""
    b = GraphBuilder(seed=8)
    x = b.input("input", ["N", 3, 6, 6])
    w = b.init(b.weight([4, 3, 3, 3]), "conv.weight", overridable=True)
    b.output(b.node("Relu", [b.bn(b.node("Conv", [x, w], name="conv"), 4, name="bn", overridable=True)]),
             shape=None)
    path = tmp_path / "torch_style.onnx"
    onnx.save(b.build(), path)
    return path


def initializer_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name in inits]


def test_without_the_flag_they_stay_refused(torch_style, tmp_path):
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(cli, ["optimize", str(torch_style), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "overridable_initializer" in result.output and "Removed" not in result.output
    assert op_count(onnx.load(out), "BatchNormalization") == 1
    assert len(initializer_inputs(onnx.load(out))) == 5


def test_with_the_flag_they_are_removed_folded_and_reported(torch_style, tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["optimize", str(torch_style), "-o", str(out), "--json", str(report),
                                      "--freeze-initializers"])
    assert result.exit_code == 0, result.output
    assert "Removed 5 initializer-backed graph inputs: conv.weight, " in result.output
    assert "Verified" in result.output
    folded, original = onnx.load(out), onnx.load(torch_style)
    assert op_count(folded, "BatchNormalization") == 0
    assert [v.name for v in folded.graph.input] == ["input"]
    data = json.loads(report.read_text())
    assert data["removed_inputs"] == initializer_inputs(original)
    assert [a["rule"] for a in data["applied"]] == ["conv_bn"]
    assert_equivalent(original, folded)


def test_folder_mode_passes_the_flag_on(torch_style, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(cli, ["optimize", str(torch_style.parent), "-o", str(out), "--freeze-initializers",
                                      "--no-verify"])
    assert result.exit_code == 0, result.output
    folded = onnx.load(out / torch_style.name)
    assert op_count(folded, "BatchNormalization") == 0 and initializer_inputs(folded) == []
