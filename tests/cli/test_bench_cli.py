"""`bnfold bench` end to end through click: output, JSON, plot, skipped providers and exit codes."""

from __future__ import annotations

import json
import sys

import onnx
import pytest
from click.testing import CliRunner

from bnfold.cli.main import cli
from bnfold.run.sessions import available_providers
from tests.bench.test_benchmark import conv_bn_relu

FAST = ["--warmup", "1", "--iterations", "5"]  # (no --quiet: it now hides the report too)
no_cuda = pytest.mark.skipif("cuda" in available_providers(), reason="this onnxruntime has CUDA")


@pytest.fixture
def files(tmp_path):
    original, candidate = tmp_path / "orig.onnx", tmp_path / "cand.onnx"
    onnx.save(conv_bn_relu(), original)
    onnx.save(conv_bn_relu(with_bn=False), candidate)
    return str(original), str(candidate)


def invoke(*args: str):
    return CliRunner().invoke(cli, ["bench", *args])


def test_compare_prints_a_table_per_configuration_and_the_opt_level_note(files):
    result = invoke(files[0], "--compare", files[1], *FAST)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.count("speedup cand.onnx vs orig.onnx:") == 2
    assert "optimizations disable" in out and "optimizations all" in out
    assert "what offline folding buys beyond onnxruntime's own fusion" in " ".join(out.split())
    assert result.stderr == ""


def test_json_has_the_documented_keys(files, tmp_path):
    out = tmp_path / "bench.json"
    result = invoke(files[0], "--compare", files[1], "--opt-level", "all", "--batch", "1,2", "--json", str(out),
                    *FAST)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["schema_version"] >= 1
    assert [(r["batch"], r["opt_level"]) for r in data["comparisons"]] == [(1, "all"), (2, "all")]
    assert all(r["iterations"] == 5 for r in data["results"])
    assert {"cpu_model", "logical_cores", "onnxruntime_version", "onnxruntime_providers", "gpu_name"} <= set(
        data["environment"])


@no_cuda
def test_unavailable_provider_is_one_skip_line_and_cpu_still_runs(files):
    result = invoke(files[0], "--compare", files[1], "--provider", "cpu,cuda", *FAST)
    assert result.exit_code == 0, result.output
    skip_lines = [line for line in result.stderr.splitlines() if line.startswith("Skipped cuda:")]
    assert len(skip_lines) == 1 and "CUDAExecutionProvider" in skip_lines[0]
    assert "cpu · onnxruntime optimizations" in result.stdout


@no_cuda
def test_only_unavailable_providers_exit_3(files):
    result = invoke(files[0], "--compare", files[1], "--provider", "cuda", *FAST)
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: nothing could be benchmarked") and "cuda" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_default_folds_in_memory(files):
    pytest.importorskip("bnfold.optimizer", reason="bnfold.optimizer not present yet")
    result = invoke(files[0], "--opt-level", "disable", *FAST)
    assert result.exit_code == 0, result.output
    assert "speedup folded vs original:" in result.stdout


def test_plot_writes_a_png(files, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench.png"
    result = invoke(files[0], "--compare", files[1], "--plot", str(out), *FAST)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args",
    [["--provider", "npu"], ["--batch", "0"], ["--batch", "a"], ["--iterations", "5", "--duration", "1"],
     ["--input-shape", "x"]],
)
def test_bad_options_exit_2(files, args):
    result = invoke(files[0], "--compare", files[1], *args, "--quiet")
    assert result.exit_code == 2
    assert "Error" in result.stderr


def test_unwritable_json_fails_before_measuring(files, tmp_path):
    result = invoke(files[0], "--compare", files[1], "--json", str(tmp_path / "missing" / "r.json"), *FAST)
    assert result.exit_code == 4
    assert result.stdout == ""  # nothing was measured or printed


def test_plot_without_matplotlib_is_one_error_line_before_measuring(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` fail
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = invoke(files[0], "--compare", files[1], "--plot", str(tmp_path / "p.png"), *FAST)
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: --plot needs matplotlib: pip install 'bnfold[plot]'"
    assert result.stdout == ""
