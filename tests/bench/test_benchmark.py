"""bnfold.benchmark on small real graphs in real onnxruntime: schema, statistics, scheduling, providers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from bnfold.bench.benchmark import MIN_ROUNDS, benchmark, interleaved_order
from bnfold.bench.runners import HostRunner, IoBindingRunner, create_bench_session, output_shapes_on_cpu
from bnfold.errors import ExitCode, InputSpecError, RuntimeUnavailableError, UsageError
from bnfold.run.sessions import available_providers
from tests.builders import GraphBuilder

FAST = dict(warmup=1, iterations=6)
RESULT_KEYS = {"model", "provider", "opt_level", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
               "min_ms", "throughput_per_s", "session_create_ms", "first_run_ms", "iterations", "file_size_bytes"}
COMPARISON_KEYS = {"baseline", "candidate", "provider", "opt_level", "batch", "speedup", "ci_low", "ci_high"}
no_cuda = pytest.mark.skipif("cuda" in available_providers(), reason="this onnxruntime has CUDA")


def conv_bn_relu(with_bn: bool = True, seed: int = 0, input_name: str = "x") -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu with a symbolic batch dim (without the BN: a stand-in folded model)."""
    b = GraphBuilder(seed=seed)
    y = b.conv(b.input(input_name, ["N", 3, 16, 16]), 8, pads=[1, 1, 1, 1])
    if with_bn:
        y = b.bn(y)
    b.output(b.node("Relu", [y]), shape=["N", 8, 16, 16])
    return b.build()


@pytest.fixture
def model_pair(tmp_path):
    original, candidate = tmp_path / "orig.onnx", tmp_path / "cand.onnx"
    onnx.save(conv_bn_relu(), original)
    onnx.save(conv_bn_relu(with_bn=False), candidate)
    return str(original), str(candidate)


def test_rounds_alternate_a_b_b_a():
    flat = [v for r in range(4) for v in interleaved_order(r)]
    assert flat == [0, 1, 1, 0, 0, 1, 1, 0]
    assert interleaved_order(1, 3) == (2, 1, 0)


def test_compare_two_files_report_schema_and_statistics(model_pair):
    original, candidate = model_pair
    report = benchmark(original, compare=candidate, **FAST)
    data = json.loads(report.to_json())
    assert {"schema_version", "results", "comparisons", "environment", "settings", "skipped"} <= set(data)
    assert len(data["results"]) == 4 and len(data["comparisons"]) == 2
    for entry in data["results"]:
        assert RESULT_KEYS <= set(entry)
        assert "samples_ms" not in entry  # kept in Python, left out of the JSON
        assert entry["min_ms"] <= entry["p50_ms"] <= entry["p90_ms"] <= entry["p99_ms"]
        assert entry["iterations"] == 6
        assert entry["throughput_per_s"] == pytest.approx(1000.0 / entry["p50_ms"], rel=1e-9)
        assert entry["session_create_ms"] > 0 and entry["first_run_ms"] > 0
    assert {r["model"] for r in data["results"]} == {original, candidate}
    assert {r["opt_level"] for r in data["results"]} == {"disable", "all"}
    for entry in data["comparisons"]:
        assert COMPARISON_KEYS <= set(entry)
        assert (entry["baseline"], entry["candidate"]) == (original, candidate)
        assert entry["ci_low"] <= entry["speedup"] <= entry["ci_high"]
        assert entry["round_ratio_ci_low"] <= entry["round_ratio"] <= entry["round_ratio_ci_high"]
    env = data["environment"]
    assert env["onnxruntime_version"] and "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert env["gpu_name"] is None and env["cpu_model"]


def test_speedup_is_the_ratio_of_the_reported_medians(model_pair):
    report = benchmark(model_pair[0], compare=model_pair[1], opt_levels=("disable",), **FAST)
    (comparison,) = report.comparisons
    base = report.result_for(model_pair[0], "cpu", "disable", 1)
    cand = report.result_for(model_pair[1], "cpu", "disable", 1)
    assert comparison.speedup == pytest.approx(base.p50_ms / cand.p50_ms, rel=1e-9)
    assert len(base.samples_ms) == len(cand.samples_ms) == comparison.rounds == 6
    assert base.file_size_bytes == len(open(model_pair[0], "rb").read())


def test_batch_sizes_each_get_a_configuration(model_pair):
    report = benchmark(model_pair[0], compare=model_pair[1], opt_levels=("all",), batches=(1, 3), **FAST)
    assert sorted(c.batch for c in report.comparisons) == [1, 3]
    batch3 = report.result_for(model_pair[1], "cpu", "all", 3)
    assert batch3.throughput_per_s == pytest.approx(3000.0 / batch3.p50_ms, rel=1e-9)


def test_batch_follows_input_shape_and_a_fixed_batch_is_not_overridden(model_pair):
    report = benchmark(model_pair[0], compare=model_pair[1], opt_levels=("all",), input_shapes={"x": (3, 3, 16, 16)},
                       **FAST)
    (result, _) = report.results
    assert result.batch == 3 and result.throughput_per_s == pytest.approx(3000.0 / result.p50_ms, rel=1e-9)
    with pytest.raises(InputSpecError, match="batch 4 cannot apply"):
        benchmark(model_pair[0], compare=model_pair[1], batches=(4,), input_shapes={"x": (3, 3, 16, 16)}, **FAST)


def test_duration_budget_runs_at_least_the_minimum_rounds(model_pair):
    report = benchmark(model_pair[0], compare=model_pair[1], opt_levels=("disable",), warmup=0, duration=0.05)
    assert report.settings.iterations is None and report.settings.duration_s == 0.05
    assert report.results[0].iterations >= MIN_ROUNDS
    assert report.results[0].iterations == report.results[1].iterations


def test_progress_reaches_its_total_without_going_back(model_pair):
    calls: list[tuple[int, int]] = []
    benchmark(model_pair[0], compare=model_pair[1], progress=lambda step, total: calls.append((step, total)), **FAST)
    steps = [s for s, _ in calls]
    assert steps == sorted(steps) and calls[-1][0] == calls[-1][1]
    assert len({t for _, t in calls}) == 1


def test_a_model_proto_is_accepted_and_labelled(model_pair):
    report = benchmark(conv_bn_relu(), compare=model_pair[1], opt_levels=("disable",), **FAST)
    assert report.comparisons[0].baseline == "model"


@no_cuda
def test_missing_provider_is_skipped_and_the_rest_runs(model_pair):
    report = benchmark(model_pair[0], compare=model_pair[1], providers=("cpu", "cuda"), opt_levels=("all",), **FAST)
    assert {r.provider for r in report.results} == {"cpu"}
    (skipped,) = report.skipped
    assert skipped.provider == "cuda" and "CUDAExecutionProvider" in skipped.reason


@no_cuda
def test_nothing_runnable_raises_with_exit_code_3(model_pair):
    with pytest.raises(RuntimeUnavailableError, match="nothing could be benchmarked.*cuda") as caught:
        benchmark(model_pair[0], compare=model_pair[1], providers=("cuda",), **FAST)
    assert caught.value.exit_code == ExitCode.MODEL_ERROR


@pytest.mark.parametrize(
    "kwargs",
    [dict(iterations=5, duration=1.0), dict(providers=("npu",)), dict(batches=(0,)), dict(warmup=-1),
     dict(opt_levels=()), dict(iterations=0)],
)
def test_bad_settings_are_usage_errors(model_pair, kwargs):
    with pytest.raises(UsageError):
        benchmark(model_pair[0], compare=model_pair[1], **kwargs)


def test_models_with_different_inputs_are_refused(model_pair, tmp_path):
    other = tmp_path / "other.onnx"
    onnx.save(conv_bn_relu(input_name="image"), other)
    with pytest.raises(InputSpecError, match="same inputs"):
        benchmark(model_pair[0], compare=str(other), **FAST)


def test_io_binding_runner_matches_a_plain_run():
    """The device path's binding logic, exercised with device='cpu' where no GPU is present."""
    data = conv_bn_relu().SerializeToString()
    session = create_bench_session(data, provider="cpu", opt_level="disable", threads=1)
    feed = {"x": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    (expected,) = session.run(None, feed)
    for shapes in (None, output_shapes_on_cpu(data, feed)):
        runner = IoBindingRunner(session, feed, device="cpu", output_shapes=shapes)
        end_to_end, device = runner.run()
        assert 0 < device <= end_to_end
        (got,) = runner._binding.copy_outputs_to_cpu()
        np.testing.assert_array_equal(got, expected)
    assert HostRunner(session, feed).run()[1] is None


def test_default_compares_original_with_folded_in_memory(tmp_path):
    pytest.importorskip("bnfold.optimizer", reason="bnfold.optimizer not present yet")
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu(), path)
    report = benchmark(str(path), opt_levels=("disable",), **FAST)
    (comparison,) = report.comparisons
    assert (comparison.baseline, comparison.candidate) == ("original", "folded")
    folded = report.result_for("folded", "cpu", "disable", 1)
    assert folded.file_size_bytes < report.result_for("original", "cpu", "disable", 1).file_size_bytes


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in available_providers(), reason="needs onnxruntime with CUDA")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_reports_device_and_end_to_end_latency(model_pair, cuda_graph):
    report = benchmark(model_pair[0], compare=model_pair[1], providers=("cuda",), opt_levels=("all",),
                       cuda_graph=cuda_graph, **FAST)
    for result in report.results:
        assert result.cuda_graph is cuda_graph
        assert result.device_p50_ms is not None and result.device_p50_ms <= result.p50_ms
    assert report.comparisons[0].device_speedup is not None
    assert report.environment.gpu_name


def test_device_results_render_with_device_columns_and_tensorrt_note(model_pair, tmp_path):
    """The GPU report path (device latency, TensorRT note) rendered from a CPU report relabelled as one."""
    from dataclasses import replace

    from bnfold.bench.render import render_report

    report = benchmark(model_pair[0], compare=model_pair[1], opt_levels=("all",), **FAST)
    results = tuple(replace(r, provider="tensorrt", device_p50_ms=r.p50_ms / 2, device_throughput_per_s=1.0)
                    for r in report.results)
    comparisons = tuple(replace(c, provider="tensorrt", device_speedup=1.5, device_ci_low=1.4, device_ci_high=1.6)
                        for c in report.comparisons)
    text = render_report(replace(report, results=results, comparisons=comparisons))
    assert "device p50 ms" in text and "speedup on the device alone: 1.500x (95% CI 1.400-1.600)" in text
    assert "TensorRT builds its engine" in text


def test_an_external_data_model_is_folded_and_benchmarked_from_another_folder(tmp_path, monkeypatch):
    """The in-memory fold of an external-data model still reads the original's data files: it is saved with
    its own data file for the run, so onnxruntime finds every weight whatever the working directory."""
    b = GraphBuilder(seed=4)
    y = b.node("Relu", [b.bn(b.conv(b.input("x", ["N", 3, 16, 16]), 8, pads=[1, 1, 1, 1]))])
    b.channels[y] = 8
    b.output(b.conv(y, 4), shape=["N", 4, 14, 14])  # this conv's weights are not folded: they stay external
    path = tmp_path / "ext.onnx"
    onnx.save_model(b.build(), path, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    monkeypatch.chdir(tmp_path.parent)
    report = benchmark(str(path), opt_levels=("disable",), **FAST)
    assert {r.model for r in report.results} == {"original", "folded"}
    assert all(r.p50_ms > 0 for r in report.results)
