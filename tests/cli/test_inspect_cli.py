"""`bnfold inspect` through click: the table, grouping, JSON, rule options and one-line errors."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

import models
from bnfold import inspect
from bnfold.cli.inspect import LIST_LIMIT
from bnfold.cli.main import cli
from tests.test_inspection import conv_bn_model


def invoke(*args: str):
    return CliRunner().invoke(cli, ["inspect", *args])


@pytest.fixture
def densenet(tmp_path):
    path = tmp_path / "densenet.onnx"
    onnx.save(models.build("densenet_block"), path)
    return path


def test_table_has_one_line_per_batchnorm_and_totals(densenet):
    result = invoke(str(densenet))
    assert result.exit_code == 0, result.output
    report = inspect(densenet)
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + 1 + len(report.batchnorms) + 2  # title, header, rows, affine, totals
    assert lines[0] == f"bnfold inspect {densenet}"
    assert lines[1].split() == ["BatchNormalization", "graph", "producer", "channels", "result"]
    for site, line in zip(report.batchnorms, lines[2:], strict=False):
        assert line.split()[:4] == [site.name, "main", site.producer_op, str(site.channels)]
        expected = f"folds ({site.rule})" if site.foldable else f"stays: {site.reason.value} - {site.sentence}"
        assert expected in line
    totals = report.totals
    reasons = ", ".join(f"{reason} {count}" for reason, count in totals.by_reason.items())
    assert set(totals.by_reason) == {"no_foldable_neighbour", "branch_not_foldable"}  # the latter: issue 12
    assert lines[-1] == (f"Totals: {totals.batchnorms} BatchNormalization, {totals.foldable} foldable, "
                         f"{totals.refused} stay ({reasons})")
    assert lines[-2] == "Affine Mul/Add/Sub/Div by constants: none recognised"


def test_many_batchnorms_are_grouped_unless_verbose(tmp_path):
    path = tmp_path / "resnet50.onnx"
    onnx.save(models.build("resnet50"), path)
    n = inspect(path).totals.batchnorms
    assert n > LIST_LIMIT
    grouped = invoke(str(path))
    assert grouped.exit_code == 0, grouped.output
    assert f"Foldable ({n}), by rule and producer:" in grouped.stdout
    assert f"  conv_bn after Conv ({n}): " in grouped.stdout
    assert len(grouped.stdout.splitlines()) < 10
    verbose = invoke(str(path), "--verbose")
    assert sum("folds (conv_bn)" in line for line in verbose.stdout.splitlines()) == n


def test_json_file_matches_the_api_report_and_dash_prints_json_only(densenet, tmp_path):
    out = tmp_path / "inspect.json"
    result = invoke(str(densenet), "--json", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == inspect(densenet).to_dict()
    assert "Totals:" in result.stdout
    dashed = invoke(str(densenet), "--json", "-")
    assert json.loads(dashed.stdout)["totals"]["batchnorms"] == 15


def test_skip_rules_shows_the_disabled_rule(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), path)
    result = invoke(str(path), "--skip-rules", "conv_bn")
    assert result.exit_code == 0, result.output
    assert "stays: rule_disabled" in result.stdout
    assert result.stdout.splitlines()[-1].endswith("0 foldable, 1 stay (rule_disabled 1)")


@pytest.mark.parametrize("args,code,message", [
    (["missing.onnx"], 3, "does not exist"),
    (["corrupt.onnx"], 3, "not an ONNX model"),
    (["m.onnx", "--rules", "conv_bn", "--skip-rules", "bn_conv"], 2, "not both"),
    (["m.onnx", "--rules", "nope"], 2, "unknown rule"),
], ids=["missing", "corrupt", "both-rule-options", "unknown-rule"])
def test_errors_are_one_line(tmp_path, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    onnx.save(conv_bn_model(), tmp_path / "m.onnx")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07 this is not protobuf")
    result = invoke(*args)
    assert result.exit_code == code
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_affine_line_names_the_rules_that_fold(tmp_path):
    """Issue 12: affine sites fold by several rules now; the summary line names those that applied."""
    import numpy as np

    from tests.builders import GraphBuilder

    b = GraphBuilder(seed=0)
    x = b.input("x", ["N", 3, 5, 5])
    z = b.node("Mul", [b.conv(x, 4, k=5), b.init(np.full([4, 1, 1], 0.5, np.float32))])
    flat = b.node("Flatten", [z])
    mm = b.node("MatMul", [flat, b.init(b.weight([4, 2]))])
    scaled = b.node("Mul", [mm, b.init(np.full([2], 2.0, np.float32))])
    b.output(b.node("Add", [scaled, b.init(np.ones(2, np.float32))]))
    path = tmp_path / "affine.onnx"
    onnx.save(b.build(), path)
    result = invoke(str(path))
    assert result.exit_code == 0, result.output
    assert "Affine Mul/Add/Sub/Div by constants: 2 fold (affine_chain, matmul_affine), 0 stay" in result.stdout
