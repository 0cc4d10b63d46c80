"""`bnfold optimize` end to end through click: outputs, report, rules, verification outcomes and exit codes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

import models
from bnfold.cli.main import cli
from bnfold.fold import fold_math
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, feeds_for, op_count, run


def invoke(*args: str):
    return CliRunner().invoke(cli, ["optimize", *map(str, args)])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256: equal snapshots mean nothing was written or changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def assert_one_clean_error(result, code: int) -> None:
    assert result.exit_code == code, result.output
    assert len(error_lines(result)) == 1, result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.output


def bn_count(path: Path) -> int:
    return op_count(onnx.load(path), "BatchNormalization")


@pytest.fixture
def resnet(tmp_path) -> Path:
    path = tmp_path / "resnet18.onnx"
    onnx.save(models.build("resnet18"), path)
    return path


def two_conv_model() -> onnx.ModelProto:
    """x -> Conv(3->4) -> BN -> Relu -> Conv(4->6) -> BN -> y: two conv_bn folds told apart by channel count."""
    b = GraphBuilder(seed=3)
    x = b.input("x", [1, 3, 8, 8])
    h = b.node("Relu", [b.bn(b.conv(x, 4))])
    b.channels[h] = 4
    b.output(b.bn(b.conv(h, 6)), shape=[1, 6, 6, 6])
    return b.build()


@pytest.fixture
def small(tmp_path) -> Path:
    path = tmp_path / "small.onnx"
    onnx.save(two_conv_model(), path)
    return path


def test_default_output_goes_beside_the_input_and_computes_the_same(resnet):
    before = snapshot(resnet.parent)
    result = invoke(resnet)
    assert result.exit_code == 0, result.output
    target = resnet.with_name("resnet18.folded.onnx")
    assert set(snapshot(resnet.parent)) == set(before) | {target.name}
    assert snapshot(resnet.parent)[resnet.name] == before[resnet.name]
    assert bn_count(target) == 0
    assert_equivalent(onnx.load(resnet), onnx.load(target))
    out = result.stdout
    assert f"-> {target}" in out and "Folded 20: conv_bn 20" in out and "Verified:" in out
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:5]}
    assert table["BatchNormalization"] == ["20", "0"] and table["nodes"] == ["69", "49"]


def test_dash_o_and_json_report(resnet, tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = invoke(resnet, "-o", out, "--json", report)
    assert result.exit_code == 0, result.output
    assert out.exists() and not resnet.with_name("resnet18.folded.onnx").exists()
    data = json.loads(report.read_text())
    assert {"applied", "refused", "reverted", "before", "after", "verification", "rules", "schema_version",
            "bnfold_version", "tensor_map"} <= set(data)
    assert len(data["applied"]) == 20 and data["refused"] == [] and data["reverted"] == []
    assert data["before"]["batchnorms"] == 20 and data["after"]["batchnorms"] == 0
    assert data["verification"]["status"] == "passed"
    assert data["verification"]["details"]["outputs"][0]["error_vs_magnitude"] < 1e-5


def test_rules_restrict_and_many_refusals_are_grouped_by_reason(resnet, tmp_path):
    result = invoke(resnet, "--rules", "gemm_bn", "-o", tmp_path / "out.onnx", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert "Folded nothing." in result.stdout and "Left 20 BatchNormalization:" in result.stdout
    assert "  rule_disabled (20): the rule that would fold it was disabled by the user" in result.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["rules"] == ["gemm_bn"] and {r["reason"] for r in data["refused"]} == {"rule_disabled"}
    assert bn_count(tmp_path / "out.onnx") == 20


def test_skip_rules_leaves_those_sites(resnet, tmp_path):
    result = invoke(resnet, "--skip-rules", "conv_bn", "-o", tmp_path / "out.onnx", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert "conv_bn" not in data["rules"] and data["applied"] == []


def test_few_refusals_are_listed_one_by_one_with_reasons(tmp_path):
    b = GraphBuilder(seed=1)
    x = b.input("x", [1, 3, 8, 8])
    conv = b.conv(b.bn(x), 4, pads=[1, 1, 1, 1])  # the padded Conv after the BN can't absorb it
    b.output(conv, shape=[1, 4, 8, 8])  # the conv's output is also a graph output
    b.output(b.bn(conv), shape=[1, 4, 8, 8])
    path = tmp_path / "m.onnx"
    onnx.save(b.build(), path)
    result = invoke(path)
    assert result.exit_code == 0, result.output
    left = [line for line in result.stdout.splitlines() if "[main]:" in line]
    assert "Left 2 BatchNormalization:" in result.stdout and len(left) == 2
    assert any(f"consumer_conv_padded - {Reason.CONSUMER_CONV_PADDED.sentence}" in line for line in left)
    assert any("producer_output_is_graph_output - the producer's output is a graph output" in line for line in left)


@pytest.mark.parametrize("args", [("--rules", "conv_bn,nope"), ("--skip-rules", "nope"),
                                  ("--rules", "conv_bn", "--skip-rules", "gemm_bn")])
def test_bad_rule_options_are_usage_errors_and_write_nothing(resnet, args):
    before = snapshot(resnet.parent)
    result = invoke(resnet, *args)
    assert_one_clean_error(result, 2)
    assert snapshot(resnet.parent) == before


def test_no_verify_is_reported_as_skipped(small, tmp_path):
    result = invoke(small, "--no-verify", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["verification"]["status"] == "skipped"
    assert "Verified:" not in result.stdout


def test_quiet_prints_nothing_on_success(small):
    result = invoke(small, "--quiet")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    assert bn_count(small.with_name("small.folded.onnx")) == 0


def test_check_writes_nothing_and_fails_while_foldable_bn_remains(small):
    before = snapshot(small.parent)
    assert_one_clean_error(invoke(small, "--check"), 1)
    assert snapshot(small.parent) == before
    assert invoke(small, "-q").exit_code == 0
    assert invoke(small.with_name("small.folded.onnx"), "--check").exit_code == 0


def test_in_place_overwrites_the_input_only_when_asked(small):
    original = onnx.load(small)
    result = invoke(small, "--in-place", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in small.parent.iterdir()) == ["small.onnx"]
    assert bn_count(small) == 0
    assert_equivalent(original, onnx.load(small))


@pytest.mark.parametrize("spelling", ["same", "dotted"])
def test_output_equal_to_input_without_in_place_is_refused(small, spelling):
    target = small if spelling == "same" else small.parent / "." / "sub" / ".." / small.name
    (small.parent / "sub").mkdir()
    before = snapshot(small.parent)
    result = invoke(small, "-o", target)
    assert_one_clean_error(result, 2)
    assert "--in-place" in error_lines(result)[0]
    assert snapshot(small.parent) == before


@pytest.mark.parametrize("where", ["missing_folder", "parent_is_a_file", "proc", "json_missing_folder"])
def test_unwritable_output_is_exit_4_and_writes_nothing(small, where):
    before = snapshot(small.parent)
    args = {
        "missing_folder": ["-o", small.parent / "no" / "such" / "out.onnx"],
        "parent_is_a_file": ["-o", small / "out.onnx"],
        "proc": ["-o", "/proc/bnfold-test-out.onnx"],  # root can't create files in /proc either
        "json_missing_folder": ["--json", small.parent / "nowhere" / "r.json"],
    }[where]
    result = invoke(small, *args)
    assert_one_clean_error(result, 4)
    assert snapshot(small.parent) == before
    assert not Path("/proc/bnfold-test-out.onnx").exists()
    assert result.stdout == "" or "(nothing written)" in result.stdout.splitlines()[0]


def _bias_fault(channels: int):
    """conv_bias (the folded Conv bias) wrong for convs of ``channels`` outputs: a bug the verifier must catch."""
    real = fold_math.conv_bias

    def faulty(bias, scale, shift):
        b = real(bias, scale, shift)
        return b + 1.0 if np.shape(scale)[0] == channels else b

    return faulty


@pytest.mark.parametrize("extra", [[], ["--in-place"]])
def test_failed_verification_without_revert_writes_nothing(small, monkeypatch, extra):
    monkeypatch.setattr(fold_math, "conv_bias", _bias_fault(6))
    before = snapshot(small.parent)
    result = invoke(small, "--no-revert", *extra)
    assert_one_clean_error(result, 1)
    assert "verification failed" in error_lines(result)[0]
    assert "(nothing written)" in result.stdout
    assert snapshot(small.parent) == before


def test_faulty_fold_is_reverted_and_the_rest_kept(small, tmp_path, monkeypatch):
    monkeypatch.setattr(fold_math, "conv_bias", _bias_fault(4))  # the first fold, inside the graph
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = invoke(small, "-o", out, "--json", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert [r["rule"] for r in data["reverted"]] == ["conv_bn"] and len(data["applied"]) == 1
    assert data["verification"]["status"] == "passed"
    assert "Reverted conv_bn at " in result.stdout and "reverted_by_verification" in result.stdout
    assert bn_count(out) == 1
    assert_equivalent(onnx.load(small), onnx.load(out))


def test_force_writes_despite_failed_verification(small, tmp_path, monkeypatch):
    monkeypatch.setattr(fold_math, "conv_bias", _bias_fault(6))
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = invoke(small, "--no-revert", "--force", "-o", out, "--json", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["verification"]["status"] == "failed"
    assert "Verification FAILED" in result.stdout and "Warning:" in result.stderr
    feeds = feeds_for(onnx.load(small))
    assert not np.allclose(run(onnx.load(small), feeds)[0], run(onnx.load(out), feeds)[0], atol=1e-3)


def dynamic_model() -> onnx.ModelProto:
    """Conv -> BN -> Reshape to a fixed size: runs only at 8x8, so the default 64x64 guess is rejected."""
    b = GraphBuilder(seed=5)
    x = b.input("x", [1, 3, "H", "W"])
    b.channels[x] = 3
    y = b.bn(b.conv(x, 4, pads=[1, 1, 1, 1]))
    flat = b.node("Reshape", [y, b.init(np.array([1, 256], dtype=np.int64))])
    b.output(flat, shape=[1, 256])
    return b.build()


@pytest.fixture
def dynamic(tmp_path) -> Path:
    path = tmp_path / "dyn.onnx"
    onnx.save(dynamic_model(), path)
    return path


def test_unverifiable_model_is_written_with_a_warning_and_the_shape_hint(dynamic):
    result = invoke(dynamic)
    assert result.exit_code == 0, result.output
    assert "NOT VERIFIED" in result.stdout and "--input-shape x:" in result.stdout
    assert bn_count(dynamic.with_name("dyn.folded.onnx")) == 0


def test_strict_refuses_an_unverifiable_model(dynamic):
    before = snapshot(dynamic.parent)
    result = invoke(dynamic, "--strict")
    assert_one_clean_error(result, 1)
    assert snapshot(dynamic.parent) == before


def test_input_shape_makes_it_verify(dynamic, tmp_path):
    result = invoke(dynamic, "--input-shape", "x:1x3x8x8", "--strict", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["verification"]["status"] == "passed"
    assert "NOT VERIFIED" not in result.stdout


def _conv_bn_around(b: GraphBuilder, middle) -> None:
    x = b.input("x", [1, 3, 8, 8])
    h = middle(b.bn(b.conv(x, 4)))
    b.channels[h] = 4
    b.output(b.bn(b.conv(h, 5)), shape=[1, 5, 4, 4])


def test_custom_domain_op_passes_through(tmp_path):
    b = GraphBuilder(seed=7)
    _conv_bn_around(b, lambda t: b.node("Swish", [t], name="custom", domain="com.example"))
    model = b.build()
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    before = snapshot(tmp_path)
    assert_one_clean_error(invoke(path), 3)  # onnxruntime can't run com.example ops, so it can't verify
    assert snapshot(tmp_path) == before
    result = invoke(path, "--no-verify", "-q")
    assert result.exit_code == 0, result.output
    out = onnx.load(path.with_name("custom.folded.onnx"))
    assert op_count(out, "BatchNormalization") == 0
    assert [(n.op_type, n.domain) for n in out.graph.node if n.name == "custom"] == [("Swish", "com.example")]
    assert {o.domain for o in out.opset_import} >= {"com.example"}


def test_model_local_function_is_kept_and_the_rest_folded(tmp_path):
    double_relu = helper.make_function(
        "local", "DoubleRelu", ["a"], ["b"],
        [helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Add", ["r", "r"], ["b"])],
        [helper.make_opsetid("", 17)])
    b = GraphBuilder(seed=8)
    _conv_bn_around(b, lambda t: b.node("DoubleRelu", [t], name="fn", domain="local"))
    model = b.build()
    model.functions.append(double_relu)
    model.opset_import.append(helper.make_opsetid("local", 1))
    path = tmp_path / "fn.onnx"
    onnx.save(model, path)
    result = invoke(path, "--strict", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["verification"]["status"] == "passed"
    out = onnx.load(path.with_name("fn.folded.onnx"))
    assert [f.name for f in out.functions] == ["DoubleRelu"]
    assert op_count(out, "DoubleRelu") == 1 and op_count(out, "BatchNormalization") == 0
    assert_equivalent(model, out)


@pytest.fixture
def external(tmp_path) -> Path:
    """resnet18 with every tensor in ``weights.bin`` beside it."""
    path = tmp_path / "ext.onnx"
    onnx.save_model(models.build("resnet18"), path, save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    return path


def test_external_data_model_is_written_with_its_own_data_file(external, tmp_path):
    before = snapshot(tmp_path)
    result = invoke(external, "-o", tmp_path / "out.onnx", "-q")
    assert result.exit_code == 0, result.output
    assert set(snapshot(tmp_path)) == set(before) | {"out.onnx", "out.onnx.data"}
    assert all(snapshot(tmp_path)[name] == digest for name, digest in before.items())
    assert_equivalent(onnx.load(external), onnx.load(tmp_path / "out.onnx"))


@pytest.mark.parametrize("output", ["weights.bin", "weights"])  # the model itself, or its .data file
def test_output_over_the_inputs_data_file_is_refused(external, tmp_path, output):
    if output == "weights":
        (tmp_path / "weights.bin").rename(tmp_path / "weights.data")
        model = onnx.load(external, load_external_data=False)
        for tensor in model.graph.initializer:
            tensor.external_data[0].value = "weights.data"
        onnx.save(model, external)
    before = snapshot(tmp_path)
    result = invoke(external, "-o", tmp_path / output)
    assert_one_clean_error(result, 2)
    assert snapshot(tmp_path) == before
    assert op_count(onnx.load(external), "BatchNormalization") == 20  # still loads, data intact


def test_faulty_fold_whose_output_is_a_graph_output_is_reverted(monkeypatch):
    """Regression: a fold's output that is also a graph output is compared under report.outputs; the
    reverter must look there too, or the bad fold fails the run instead of being reverted."""
    from bnfold.optimizer import optimize

    monkeypatch.setattr(fold_math, "conv_bias", _bias_fault(6))
    result = optimize(two_conv_model())
    assert [r.rule for r in result.report.reverted] == ["conv_bn"]
    assert result.report.verification.status == "passed"
    assert result.report.after.batchnorms == 1


def test_unknown_input_name_in_input_shape_is_an_error_not_a_silent_skip(small):
    """A typo in --input-shape is the user's mistake: exit 3 naming the real inputs, nothing written."""
    result = invoke(small, "--input-shape", "nope:1x3x8x8")
    assert result.exit_code == 3, result.output
    assert "nope" in result.stderr and not small.with_name("small.folded.onnx").exists()
