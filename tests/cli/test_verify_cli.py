"""`bnfold verify` end to end through click: table, verdict, exit codes, input handling, JSON report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from bnfold.cli.main import cli
from bnfold.run.sessions import PROVIDERS, available_providers
from tests.verification.test_verifier import (
    hand_fold,
    nan_bias,
    nudge_bias,
    reshape_model,
    scale_channel,
    swap_bias,
    two_layer_model,
)


def invoke(*args):
    return CliRunner().invoke(cli, ["verify", *map(str, args)])


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


@pytest.fixture(scope="module")
def reference_model() -> onnx.ModelProto:
    return two_layer_model()


@pytest.fixture
def paths(tmp_path, reference_model):
    def save(model: onnx.ModelProto, name: str):
        path = tmp_path / name
        onnx.save(model, path)
        return path
    return save


def test_correct_fold_passes_with_a_table(paths, reference_model):
    ref, cand = paths(reference_model, "ref.onnx"), paths(hand_fold(reference_model), "cand.onnx")
    result = invoke(ref, cand)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("output ") and "max abs" in line and "cosine" in line for line in lines)
    row = next(line for line in lines if line.startswith("bn2_out"))
    assert row.endswith("ok") and " 0/3456 " in row
    assert "graph optimizations disabled" in result.stdout and lines[-1].startswith("PASS")


@pytest.mark.parametrize("fault", [{"bn2": scale_channel()}, {"bn1": nudge_bias()}, {"bn2": swap_bias()},
                                   "fp16", {"bn2": nan_bias}], ids=["channel*1.01", "bias+3%", "bias-swap",
                                                                    "fp16-fold", "nan"])
def test_faults_exit_1_naming_the_output(paths, reference_model, fault, tmp_path):
    candidate = hand_fold(reference_model, math_dtype=np.float16) if fault == "fp16" else \
        hand_fold(reference_model, fault)
    report = tmp_path / "report.json"
    result = invoke(paths(reference_model, "ref.onnx"), paths(candidate, "cand.onnx"), "--json", report)
    assert result.exit_code == 1, result.output
    (error,) = error_lines(result)
    assert error.startswith("Error: verification failed: output 'bn2_out' differs")
    assert "FAIL" in result.stdout.splitlines()[-1]
    data = json.loads(report.read_text())  # written on failure too
    assert data["passed"] is False and data["outputs"][0]["passed"] is False


def test_per_layer_names_the_faulty_tensor_and_node(paths, reference_model):
    candidate = hand_fold(reference_model, {"bn1": scale_channel()})
    result = invoke(paths(reference_model, "r.onnx"), paths(candidate, "c.onnx"), "--per-layer")
    assert result.exit_code == 1
    assert "First divergence: tensor 'bn1_out' from node 'conv1' (Conv)" in result.stdout
    assert any(line.startswith("bn1_out") and line.endswith("FAIL") for line in result.stdout.splitlines())


def test_dynamic_dims_are_recorded_in_the_report(paths, tmp_path):
    model = two_layer_model(shape=("N", 8, "H", "W"))
    report = tmp_path / "r.json"
    result = invoke(paths(model, "r.onnx"), paths(hand_fold(model), "c.onnx"), "--json", report, "--samples", "1")
    assert result.exit_code == 0, result.output
    (spec,) = json.loads(report.read_text())["inputs"]
    assert spec == {"name": "x", "dtype": "float32", "shape": [1, 8, 64, 64], "declared": ["N", 8, "H", "W"],
                    "chosen": {"0": 1, "2": 64, "3": 64}}
    assert "guessed dim 0=1, dim 2=64, dim 3=64" in result.stdout


def test_shape_onnxruntime_rejects_exits_3_with_advice(paths):
    path = paths(reshape_model(), "reshape.onnx")
    result = invoke(path, path)
    assert result.exit_code == 3, result.output
    (error,) = error_lines(result)
    assert "x dims 0, 1 guessed as 1, 64" in error and "--input-shape x:1x<d1>" in error
    assert invoke(path, path, "--input-shape", "x:2x12").exit_code == 0


def test_unknown_input_name_in_input_shape_is_an_error(paths, reference_model):
    path = paths(reference_model, "r.onnx")
    result = invoke(path, path, "--input-shape", "image:1x8x12x12")
    assert result.exit_code == 3
    assert "'image', not an input of the model; its inputs are: x" in error_lines(result)[0]


def test_npz_file_and_folder_are_used_as_given(paths, reference_model, tmp_path):
    ref, cand = paths(reference_model, "r.onnx"), paths(hand_fold(reference_model), "c.onnx")
    folder = tmp_path / "inputs"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):
        np.savez(folder / f"{i}.npz", x=rng.standard_normal((3, 8, 12, 12)).astype(np.float32))
    for source, samples in ((folder / "1.npz", 1), (folder, 3)):
        report = tmp_path / "r.json"
        result = invoke(ref, cand, "--inputs", source, "--json", report)
        assert result.exit_code == 0, result.output
        data = json.loads(report.read_text())
        assert data["samples"] == samples and data["inputs"][0]["shape"] == [3, 8, 12, 12]
        assert data["inputs"][0]["chosen"] == {} and data["outputs"][0]["shape"] == [3, 12, 12, 12]


def test_json_report_keys(paths, reference_model, tmp_path):
    report = tmp_path / "r.json"
    ref, cand = paths(reference_model, "r.onnx"), paths(hand_fold(reference_model), "c.onnx")
    assert invoke(ref, cand, "--json", report, "--check-tensor", "bn1_out").exit_code == 0
    data = json.loads(report.read_text())
    assert {"passed", "outputs", "tensors", "first_divergence", "inputs", "samples", "seed", "atol", "rtol",
            "provider", "graph_optimizations", "schema_version"} <= set(data)
    assert data["graph_optimizations"] == "disabled" and data["first_divergence"] is None
    assert {"name", "dtype", "shape", "max_abs_error", "max_rel_error", "mean_abs_error", "error_vs_magnitude",
            "cosine", "mismatched", "new_nonfinite", "top1_agreement", "passed"} <= set(data["outputs"][0])
    assert [t["name"] for t in data["tensors"]] == ["bn1_out"]


def test_model_and_usage_errors(paths, reference_model, tmp_path):
    path = paths(reference_model, "r.onnx")
    missing = invoke(tmp_path / "nope.onnx", path)
    assert missing.exit_code == 3 and "not found" in error_lines(missing)[0]
    assert invoke(path, path, "--atol", "-1").exit_code == 2
    assert invoke(path, path, "--json", tmp_path / "no" / "r.json").exit_code == 4
    absent = [p for p in PROVIDERS if p not in available_providers()]
    if absent:
        result = invoke(path, path, "--provider", absent[0])
        assert result.exit_code == 3 and "available: cpu" in error_lines(result)[0]
