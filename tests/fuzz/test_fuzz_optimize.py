"""Property-based fuzzing of ``bnfold.optimize`` over random CNN-like graphs (see tests/fuzz/graphs.py).

Each property runs ``BNFOLD_FUZZ_EXAMPLES`` examples (default 40, a few seconds on 2 cores). For a long run:

    BNFOLD_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest -q tests/fuzz --hypothesis-show-statistics

Examples are derandomized (the same every run), so CI never flakes on a new draw; set BNFOLD_FUZZ_RANDOM=1 to
explore fresh examples instead. A failure prints the shrunk graph's ops; rebuild it with the printed blob.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from onnx import TensorProto, numpy_helper

from bnfold import optimize
from tests.builders import GraphBuilder, feeds_for, op_count, session
from tests.fuzz.graphs import BN, cnn_models

EXAMPLES = int(os.environ.get("BNFOLD_FUZZ_EXAMPLES", "40"))
settings.register_profile(
    "bnfold-fuzz", max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
    derandomize=not os.environ.get("BNFOLD_FUZZ_RANDOM"), suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings.get_profile("bnfold-fuzz")

FP32_RELATIVE, FP32_ABSOLUTE = 1e-4, 1e-6
# fp16: the folded model may be at most FP16_FACTOR times as far from an fp32 run of the same graph as the
# unfolded fp16 model is, plus FP16_SLACK ulps of the output's magnitude (one extra rounding of each weight).
FP16_FACTOR, FP16_SLACK = 2.0, 4 * 2.0**-10
FP16_MAX = 6.0e4  # fp32 reference outputs beyond this overflow in fp16 either way: no numeric comparison
SEEDS = (1, 2, 3)  # input samples per example


def signature(values: list[onnx.ValueInfoProto]) -> list[tuple]:
    """(name, element type, dims) of graph inputs or outputs, in order."""
    return [(v.name, v.type.tensor_type.elem_type, tuple(d.dim_param or d.dim_value for d in
             v.type.tensor_type.shape.dim)) for v in values]


def constant_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors.extend(a.t for a in node.attribute if node.op_type == "Constant" and a.name == "value")
    return tensors


def as_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with every fp16 tensor, Cast target and graph I/O in fp32 (values exactly kept)."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    for tensor in constant_tensors(twin):
        if tensor.data_type == TensorProto.FLOAT16:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
    for node in twin.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
    for value in list(twin.graph.input) + list(twin.graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    return twin


def _outputs_over_samples(models: list[onnx.ModelProto], feeds: list[dict[str, np.ndarray]]) -> list[list]:
    """For each model, for each graph output, its values on every feed (sessions built once)."""
    runs = []
    for model in models:
        sess = session(model)
        runs.append(list(zip(*(sess.run(None, f) for f in feeds), strict=True)))
    return runs


def assert_fp32_close(model: onnx.ModelProto, folded: onnx.ModelProto) -> None:
    feeds = [feeds_for(model, seed) for seed in SEEDS]
    names = [o.name for o in model.graph.output]
    for name, before, after in zip(names, *_outputs_over_samples([model, folded], feeds), strict=True):
        for a, b in zip(before, after, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            error = np.abs(a.astype(np.float64) - b).max(initial=0.0)
            bound = FP32_RELATIVE * np.abs(a).max(initial=0.0) + FP32_ABSOLUTE
            assert error <= bound, f"output {name}: max abs error {error:.3g} > {bound:.3g}"


def assert_fp16_no_worse(model: onnx.ModelProto, folded: onnx.ModelProto) -> None:
    """Folding rounds each folded weight once more; that must not make the fp16 model much less accurate.

    Errors and magnitude are maxima over all samples: with a batch of 1 a single sample's output can be small
    by cancellation (a few large terms summing to little), and its fp16 noise is that of the large terms.
    """
    feeds = [feeds_for(model, seed) for seed in SEEDS]
    exact = _outputs_over_samples([as_float32(model)], [{k: v.astype(np.float32) for k, v in f.items()}
                                                         for f in feeds])[0]
    names = [o.name for o in model.graph.output]
    for name, ref, before, after in zip(names, exact, *_outputs_over_samples([model, folded], feeds), strict=True):
        ref64 = [r.astype(np.float64) for r in ref]
        magnitude = max(np.abs(r).max(initial=0.0) for r in ref64)
        if magnitude > FP16_MAX or not all(np.isfinite(a).all() for a in before):
            event("fp16 output overflows: not compared")
            continue
        unfolded = max(np.abs(a - r).max(initial=0.0) for a, r in zip(before, ref64, strict=True))
        error = max(np.abs(b - r).max(initial=0.0) for b, r in zip(after, ref64, strict=True))
        bound = FP16_FACTOR * unfolded + FP16_SLACK * magnitude
        assert error <= bound, (f"output {name}: folded fp16 error {error:.3g} > {bound:.3g} "
                                f"(unfolded fp16 error {unfolded:.3g}, magnitude {magnitude:.3g})")


def is_fp16(model: onnx.ModelProto) -> bool:
    return model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16


@FUZZ
@given(cnn_models())
def test_optimize_keeps_outputs_interface_and_is_idempotent(model: onnx.ModelProto) -> None:
    result = optimize(model, verify=False)
    folded = result.model
    event(f"{'fp16' if is_fp16(model) else 'fp32'}, {len(result.report.applied)} folds")
    for fold in result.report.applied:
        event(f"applied {fold.rule}")
    onnx.checker.check_model(folded, full_check=True)
    assert signature(folded.graph.input) == signature(model.graph.input)
    assert signature(folded.graph.output) == signature(model.graph.output)
    assert op_count(folded, BN) <= op_count(model, BN)
    assert op_count(folded, BN) == op_count(model, BN) - sum(f.op_type == BN for f in result.report.applied)
    for tensor in constant_tensors(folded):
        value = numpy_helper.to_array(tensor)
        assert np.isfinite(value).all() if value.dtype.kind == "f" else True, f"{tensor.name} has inf/nan"
    again = optimize(folded, verify=False)
    assert not again.report.applied, [a.rule for a in again.report.applied]
    assert again.model.SerializeToString() == folded.SerializeToString()
    if is_fp16(model):
        assert_fp16_no_worse(model, folded)
    else:
        assert_fp32_close(model, folded)


@FUZZ
@given(cnn_models(dtypes=(np.float32,)))
def test_verified_optimize_passes_without_reverting(model: onnx.ModelProto) -> None:
    """Verification (onnxruntime; each fold's own tensor checked) must accept every fp32 fold the rules make.

    fp32 only: fp16 false alarms are a known issue, pinned by the fp16 regression test below.
    """
    result = optimize(model)
    status = result.report.verification.status
    event(f"verification {status}")
    assert status in ("passed", "unchanged"), result.report.verification.message
    assert not result.report.reverted, result.report.reverted


# ---- regressions the fuzzer found, as minimal reproducers -------------------------------------------------

def test_dead_reader_does_not_make_optimize_non_idempotent() -> None:
    """A dead Identity reading the Conv output made conv_bn refuse (another reader); cleanup then deleted the
    Identity, so a second optimize folded what the first had refused, for a reason the returned model no
    longer shows. Found as Gemm -> BN -> (BN, dead Identity)."""
    b = GraphBuilder(seed=0)
    conv = b.conv(b.input("x", [1, 3, 8, 8]), 4)
    b.node("Identity", [conv])  # read by nobody, no graph output
    b.output(b.bn(conv), shape=[1, 4, 8, 8])
    first = optimize(b.build(), verify=False)
    again = optimize(first.model, verify=False)
    assert [f.rule for f in again.report.applied] == []
    assert again.model.SerializeToString() == first.model.SerializeToString()


@pytest.mark.parametrize("fold_output_is_graph_output", [False, True])
def test_failing_fold_is_reverted_even_when_its_output_is_a_graph_output(fold_output_is_graph_output: bool) -> None:
    """With zero tolerance any re-rounding fails, so the fold must be reverted and the original returned.
    Where the fold's tensor is a graph output it is compared as an output, not as a checked tensor, and
    the optimizer found no fold to blame: VerificationFailed instead of a revert."""
    b = GraphBuilder(seed=3)
    y = b.bn(b.conv(b.input("x", [1, 3, 8, 8]), 4))
    b.output(y if fold_output_is_graph_output else b.node("Relu", [y]), shape=[1, 4, 8, 8])
    result = optimize(b.build(), atol=0.0, rtol=0.0)
    assert [f.rule for f in result.report.reverted] == ["conv_bn"]
    assert result.report.verification.status == "passed"
    assert op_count(result.model, BN) == 1


def test_fp16_gemm_bn_fold_is_not_reverted_for_rounding_noise_in_a_small_sample() -> None:
    """fp16 Gemm [1, 8] x [8, 2] -> BN -> Relu. The fold is as accurate as fp16 allows (the fuzz criterion
    holds), but verification judges each [1, F] channel by one sample's single element: 0.5713 vs 0.5865
    (2 ulps of the 8.5 the same channel reaches in the other sample) exceeds 1e-2 of 0.59, and it reverts."""
    b = GraphBuilder(seed=100, dtype=np.float16)
    y = b.node("Gemm", [b.input("x", [1, 8]), b.init(b.weight([8, 2], scale=1.0))])
    b.channels[y] = 2
    b.output(b.node("Relu", [b.bn(y)]), shape=[1, 2])
    model = b.build()
    assert_fp16_no_worse(model, optimize(model, verify=False).model)
    assert optimize(model).report.reverted == ()
