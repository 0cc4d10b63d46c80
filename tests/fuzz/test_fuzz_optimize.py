"""Property-based fuzzing of ``bnfold.optimize`` over random CNN-like graphs (see tests/fuzz/graphs.py).

Each property runs ``BNFOLD_FUZZ_EXAMPLES`` examples (default 40: a few seconds on 2 cores). A long run:

    BNFOLD_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest -q tests/fuzz --hypothesis-show-statistics

Examples are derandomized (the same every run) so CI never flakes on a new draw; BNFOLD_FUZZ_RANDOM=1 explores
fresh ones. A failure is shrunk to a few nodes and printed with a ``@reproduce_failure`` blob.

Accuracy criteria, per graph output, as maxima over SEEDS input samples:
- fp32: |folded - original| <= 1e-4 * max|original| + 1e-6. Measured fold noise is ~1e-6 of the magnitude.
- fp16: checked in two steps, because folding can legitimately make an fp16 model much less accurate: the
  folded layer's output carries the BN's shift and is rounded in fp16 at that magnitude (its weights and bias
  too), where the unfolded model rounds before the shift (or not at all: onnxruntime's CPU provider computes
  some fp16 ops in fp32); a later high-gain BN or a cancelling pool amplifies the difference (seen: 40 fp16
  ulps of the output's magnitude).
  1. exactness: every fp16 constant of a node that absorbed one fold is the fp16 rounding (within 1 ulp:
     fp64 -> fp32 -> fp16 double rounding) of what bnfold computes for the same graph in fp32, whose outputs
     pass the fp32 criterion;
  2. runtime: the fp16 folded model is at most 2x as far from an fp32 run of the graph as the unfolded fp16
     model, plus 2x the effect of that storage rounding alone (the fp16 folded constants run in fp32 vs the
     fp32 fold), plus 4 fp16 ulps of the output's magnitude.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from onnx import TensorProto, numpy_helper

from bnfold import optimize
from bnfold.errors import VerificationFailed
from bnfold.run.inputs import make_feeds
from tests.builders import GraphBuilder, feeds_for, op_count, session
from tests.fuzz.graphs import BN, cnn_models

EXAMPLES = int(os.environ.get("BNFOLD_FUZZ_EXAMPLES", "40"))
settings.register_profile(
    "bnfold-fuzz", max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
    derandomize=not os.environ.get("BNFOLD_FUZZ_RANDOM"), suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings.get_profile("bnfold-fuzz")

FP32_RELATIVE, FP32_ABSOLUTE = 1e-4, 1e-6
FP16_FACTOR, FP16_SLACK = 2.0, 4 * 2.0**-10
FP16_MAX = 6.0e4  # fp32 reference outputs beyond this overflow in fp16 either way: no numeric comparison
SEEDS = (1, 2, 3)


def record(what: str) -> None:
    """A hypothesis event (shown by --hypothesis-show-statistics) when running under @given."""
    if currently_in_test_context():
        event(what)


def signature(values) -> list[tuple]:
    """(name, element type, dims) of graph inputs or outputs, in order."""
    return [(v.name, v.type.tensor_type.elem_type, tuple(d.dim_param or d.dim_value for d in
             v.type.tensor_type.shape.dim)) for v in values]


def named_constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node values, by the tensor name the graph reads them as."""
    found = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            found.update((node.output[0], a.t) for a in node.attribute if a.name == "value")
    return found


def as_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in fp32 on the same values: fp16 constants, graph I/O and Cast targets become
    fp32, and a constant cast to fp16 is rounded to fp16 precision first (the graphs cast only constants)."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    constants = named_constants(twin)
    for node in twin.graph.node:
        to = next((a for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to is not None and to.i == TensorProto.FLOAT16:
            source = constants[node.input[0]]
            rounded = numpy_helper.to_array(source).astype(np.float16).astype(np.float32)
            source.CopyFrom(numpy_helper.from_array(rounded, source.name))
            to.i = TensorProto.FLOAT
    for tensor in constants.values():
        if tensor.data_type == TensorProto.FLOAT16:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
    for value in list(twin.graph.input) + list(twin.graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    return twin


def outputs_over_samples(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """For each graph output, its float64 values on every feed (one session)."""
    sess = session(model)
    runs = [sess.run(None, {k: v.astype(input_dtype(sess, k)) for k, v in f.items()}) for f in feeds]
    return [[np.asarray(r, dtype=np.float64) for r in per_output] for per_output in zip(*runs, strict=True)]


def input_dtype(sess, name: str) -> type:
    kind = next(i.type for i in sess.get_inputs() if i.name == name)
    return np.float16 if kind == "tensor(float16)" else np.float32


def worst(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(np.abs(x - y).max(initial=0.0) for x, y in zip(a, b, strict=True))


def magnitude(values: list[np.ndarray]) -> float:
    return max(np.abs(v).max(initial=0.0) for v in values)


def assert_fp32_close(model: onnx.ModelProto, folded: onnx.ModelProto) -> None:
    feeds = [feeds_for(model, seed) for seed in SEEDS]
    names = [o.name for o in model.graph.output]
    for name, a, b in zip(names, outputs_over_samples(model, feeds), outputs_over_samples(folded, feeds), strict=True):
        error, bound = worst(a, b), FP32_RELATIVE * magnitude(a) + FP32_ABSOLUTE
        assert error <= bound, f"output {name}: max abs error {error:.3g} > {bound:.3g}"


def assert_fp16_fold_is_rounded_fp32_fold(folded: onnx.ModelProto, folded32: onnx.ModelProto, applied: tuple) -> None:
    """Criterion 1: bnfold's fp16 constants are its fp32 constants for the same graph, rounded to fp16.

    Not for a node that absorbed several folds: each fold rounds to the weight dtype, and a later fold's
    scale amplifies the earlier rounding (in fp16 by several ulps; criterion 2 still applies to it).
    """
    c16, c32 = named_constants(folded), named_constants(folded32)
    assert c16.keys() == c32.keys()
    chained = {target for target, n in Counter(f.target for f in applied).items() if n > 1}
    skip = {name for node in folded.graph.node if node.name in chained for name in node.input}
    for name, tensor in c16.items():
        value = numpy_helper.to_array(tensor)
        if value.dtype != np.float16 or name in skip:
            continue
        expected = numpy_helper.to_array(c32[name]).astype(np.float16)
        off = np.abs(value.astype(np.float64) - expected) > np.spacing(np.abs(expected))
        assert not off.any(), f"{name}: {value[off][:4]} is not the fp16 rounding of {expected[off][:4]}"


def assert_fp16_no_worse(model: onnx.ModelProto, folded: onnx.ModelProto, folded32: onnx.ModelProto) -> None:
    """Criterion 2: the folded fp16 model's error is that of fp16 arithmetic plus storing the fold in fp16."""
    feeds = [feeds_for(model, seed) for seed in SEEDS]
    twin = as_float32(model)
    runs = [outputs_over_samples(m, feeds) for m in (twin, model, folded, as_float32(folded), folded32)]
    for name, exact, before, after, stored, fold32 in zip([o.name for o in model.graph.output], *runs, strict=True):
        if magnitude(exact) > FP16_MAX or not all(np.isfinite(v).all() for v in before):
            record("fp16 output overflows: not compared")
            continue
        unfolded, storage = worst(before, exact), worst(stored, fold32)
        error = worst(after, exact)
        bound = FP16_FACTOR * (unfolded + storage) + FP16_SLACK * magnitude(exact)
        assert error <= bound, (f"output {name}: folded fp16 error {error:.3g} > {bound:.3g} (unfolded fp16 error "
                                f"{unfolded:.3g}, fp16 storage of the fold {storage:.3g})")


def check_fp16(model: onnx.ModelProto, folded: onnx.ModelProto, applied: tuple) -> None:
    twin = optimize(as_float32(model), verify=False)
    if [a.key for a in twin.report.applied] != [a.key for a in applied]:
        record("fp16 folds differ from fp32 folds: not compared")  # overflow / underflow refusals
        return
    assert_fp32_close(as_float32(model), twin.model)
    assert_fp16_fold_is_rounded_fp32_fold(folded, twin.model, applied)
    assert_fp16_no_worse(model, folded, twin.model)


def overflows_fp16_on_verification_inputs(model: onnx.ModelProto) -> bool:
    """Whether some output of the graph, run in fp32 on the inputs optimize verifies with, exceeds fp16 range:
    then the fp16 models saturate to inf, and comparing what is left finite proves nothing either way."""
    feeds, _ = make_feeds(model, samples=2, seed=0)
    return any(magnitude(values) > FP16_MAX for values in outputs_over_samples(as_float32(model), feeds))


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
    assert op_count(folded, BN) == op_count(model, BN) - sum(f.op_type == BN for f in result.report.applied)
    for name, tensor in named_constants(folded).items():
        value = numpy_helper.to_array(tensor)
        assert value.dtype.kind != "f" or np.isfinite(value).all(), f"{name} has inf/nan"
    again = optimize(folded, verify=False)
    assert [a.rule for a in again.report.applied] == []
    assert again.model.SerializeToString() == folded.SerializeToString()
    if is_fp16(model):
        check_fp16(model, folded, result.report.applied)
    else:
        assert_fp32_close(model, folded)


@FUZZ
@given(cnn_models())
def test_verified_optimize_passes_reverting_only_fp16_folds(model: onnx.ModelProto) -> None:
    """Verification (onnxruntime; each fold's own tensor checked) accepts every fp32 fold the rules make.

    An fp16 fold may be reverted: stored in fp16, a fold can be much less accurate than the unfolded model
    (see the module docstring), and verification is right to refuse that. VerificationFailed on fp16 is let
    pass where the folds meet both fp16 criteria: the known issue pinned by
    test_fold_whose_error_grows_only_downstream_passes_within_the_models_own_noise_floor.
    """
    if is_fp16(model) and overflows_fp16_on_verification_inputs(model):
        record("fp16 reference overflows on the verification inputs: not verified")
        return
    try:
        result = optimize(model)
    except VerificationFailed:
        if not is_fp16(model):
            raise
        unverified = optimize(model, verify=False)
        check_fp16(model, unverified.model, unverified.report.applied)  # a real fp16 fold error fails here
        record("fp16 VerificationFailed with no fold to revert (known)")
        return
    record(f"verification {result.report.verification.status}, {len(result.report.reverted)} reverted")
    assert result.report.verification.status in ("passed", "unchanged"), result.report.verification.message
    assert is_fp16(model) or result.report.reverted == ()


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
    Where the fold's tensor was a graph output it was compared as an output, not as a checked tensor, and
    the optimizer found no fold to blame: VerificationFailed instead of a revert."""
    b = GraphBuilder(seed=3)
    y = b.bn(b.conv(b.input("x", [1, 3, 8, 8]), 4))
    b.output(y if fold_output_is_graph_output else b.node("Relu", [y]), shape=[1, 4, 8, 8])
    result = optimize(b.build(), atol=0.0, rtol=0.0)
    assert [f.rule for f in result.report.reverted] == ["conv_bn"]
    assert result.report.verification.status == "passed"
    assert op_count(result.model, BN) == 1


def test_fp16_gemm_bn_fold_is_not_reverted_for_rounding_noise_in_a_small_sample() -> None:
    """fp16 Gemm [1, 8] x [8, 2] -> BN -> Relu. The fold is as accurate as fp16 allows (both fp16 criteria
    hold), but verification judged each [1, F] channel by one sample's single element: 0.5713 vs 0.5865
    (2 ulps of the 8.5 the same channel reaches in the other sample) exceeded 1e-2 of 0.59, and it reverted."""
    b = GraphBuilder(seed=100, dtype=np.float16)
    y = b.node("Gemm", [b.input("x", [1, 8]), b.init(b.weight([8, 2], scale=1.0))])
    b.channels[y] = 2
    b.output(b.node("Relu", [b.bn(y)]), shape=[1, 2])
    model = b.build()
    unverified = optimize(model, verify=False)
    check_fp16(model, unverified.model, unverified.report.applied)
    assert optimize(model).report.reverted == ()


def test_fold_whose_error_grows_only_downstream_passes_within_the_models_own_noise_floor() -> None:
    """fp16 Conv -> BN1 -> Relu -> BN2. BN1 lifts activations to 8 +- 0.1 and BN2 (not foldable: Relu in
    between) removes the offset again. Folded, the Conv's output carries the offset and is rounded in fp16
    at magnitude 8; BN2's gain of 10 turns that into 0.03 at its output (1 % of it), where the unfolded model
    is off by 0.001. Verification rightly fails the output, but the fold's own tensor passes (0.004 at 8), so
    the optimizer finds no fold to blame and raises VerificationFailed instead of reverting conv_bn.
    Found by the fuzzer as fp16 Conv -> BN -> GlobalAveragePool -> Gemm -> BN (cancellation, then gain).
    Issue 11 changed the verdict on purpose: onnxruntime's own fusion of the same model (graph optimisations
    on) is off by as much (noise floor 0.014 vs bnfold's 0.012), so the fold is kept; the output's tolerance
    comes from that measured floor, and the fold passes its own local check."""
    b = GraphBuilder(seed=0, dtype=np.float16)
    y = b.conv(b.input("x", [1, 4, 8, 8]), 4, name="conv")
    ones = np.ones(4, dtype=np.float16)
    y = b.node("Relu", [b.bn(y, params=[0.1 * ones, 8 * ones, 0 * ones, ones], name="bn1")], name="relu")
    b.output(b.bn(y, 4, params=[ones, 0 * ones, 8 * ones, 0.01 * ones], name="bn2"), shape=[1, 4, 8, 8])
    result = optimize(b.build())
    assert result.report.verification.status == "passed"
    assert result.report.reverted == ()
    assert [(c.checked_by, c.passed) for c in result.report.checks] == [("local", True)]
    (output,) = result.report.verification.details["outputs"]
    assert "noise floor" in output["tolerance"] and output["max_scaled_error"] > 0.01  # beyond the float16 table


def test_a_later_fold_never_reads_a_stale_float64_value() -> None:
    """Found by the fuzzer: BN -> BN -> Conv(VALID) -> BN. bn_conv folded the second BN into the Conv and kept
    the bias's float64 value for the chain; conv_bn then rewrote that bias without one, and bn_conv folding the
    first BN read the stale float64 bias: the output was off by 0.004."""
    b = GraphBuilder(seed=0)
    x = b.input("x", [1, 1, 5])
    zero_gamma = [np.zeros(1, np.float32), np.ones(1, np.float32), np.ones(1, np.float32) * 0.5,
                  np.ones(1, np.float32)]
    h = b.bn(b.bn(x, 1, params=zero_gamma), 1, params=[p * 1.3 for p in zero_gamma])
    y = b.conv(h, 1, k=1, dims=1, bias=False, auto_pad="VALID")
    b.output(b.bn(y, 1, params=[zero_gamma[0], -np.ones(1, np.float32), zero_gamma[2], zero_gamma[3]]))
    model = b.build()
    folded = optimize(model, verify=False).model
    assert op_count(folded, BN) == 0
    assert_fp32_close(model, folded)
