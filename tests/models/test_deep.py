"""The deep builders (ResNet-101, DenseNet-201, 4-level 3-D U-Net) and their float16-compute, float32-I/O variants."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

import models
from models.fp16 import MAX_FINITE, MIN_POSITIVE, to_float16_keep_io

FP32_NAMES = [n for n in models.DEEP_NAMES if not n.endswith("_fp16io")]
# BatchNormalizations in each deep model and how many directly follow a Conv/ConvTranspose (the fold targets).
EXPECTED_BN = {"resnet101": (104, 104), "densenet201": (201, 99), "unet3d_deep": (22, 22)}
FP16_STEP = 2.0**-10  # float16's relative spacing


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _bn_after_conv(model: onnx.ModelProto) -> int:
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    return sum(n.op_type == "BatchNormalization" and producers.get(n.input[0]) in ("Conv", "ConvTranspose")
               for n in model.graph.node)


def test_deep_names_registered_in_pairs() -> None:
    assert set(models.DEEP_NAMES) <= set(models.ALL_NAMES)
    assert not set(models.DEEP_NAMES) & set(models.MODEL_NAMES)
    assert set(models.DEEP_NAMES) == {*FP32_NAMES, *(f"{n}_fp16io" for n in FP32_NAMES)}
    assert set(FP32_NAMES) == set(EXPECTED_BN)


@pytest.mark.parametrize("name", FP32_NAMES)
def test_depth_is_the_published_one(name: str) -> None:
    model = models.build(name)
    assert (models.bn_count(model), _bn_after_conv(model)) == EXPECTED_BN[name]
    if name == "unet3d_deep":
        ops = {n.op_type for n in model.graph.node}
        assert {"Conv", "ConvTranspose", "Concat", "MaxPool"} <= ops
        weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
        assert {len(t.dims) for t in model.graph.initializer if t.name in weights} == {5}


@pytest.mark.parametrize("name", FP32_NAMES)
def test_fp16io_variant_has_casts_at_both_ends_and_fp16_inside(name: str) -> None:
    model = models.build(f"{name}_fp16io")
    onnx.checker.check_model(model, full_check=True)
    io_types = {v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    assert io_types == {TensorProto.FLOAT}
    assert {t.data_type for t in model.graph.initializer} == {TensorProto.FLOAT16}
    first, last = model.graph.node[0], model.graph.node[-1]
    assert (first.op_type, first.input[0], first.attribute[0].i) == ("Cast", "input", TensorProto.FLOAT16)
    assert (last.op_type, last.output[0], last.attribute[0].i) == ("Cast", "logits", TensorProto.FLOAT)
    assert sum(n.op_type == "Cast" for n in model.graph.node) == 2
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    internal = {v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert internal == {TensorProto.FLOAT16}, "every intermediate tensor is computed in float16"


@pytest.mark.parametrize("name", FP32_NAMES)
def test_fp16io_variant_computes_what_the_fp32_one_does_at_fp16_precision(name: str) -> None:
    fp32, fp16 = models.build(name), models.build(f"{name}_fp16io")
    feeds = models.random_inputs(fp32, batch=1, seed=2)
    ref, half = _run(fp32, feeds).astype(np.float64), _run(fp16, feeds).astype(np.float64)
    assert half.dtype == np.float64 and np.isfinite(half).all()
    scale = max(1.0, float(np.abs(ref).max()))
    error = float(np.abs(half - ref).max()) / scale
    # float16 rounding at every layer: far above float32 noise, far below a wrong model's error
    assert 1e-6 < error < 200 * FP16_STEP


def test_fp16_conversion_clamps_like_the_converter() -> None:
    model = models.build("unet3d_deep")
    weight = next(t for t in model.graph.initializer if t.name.endswith("conv1.weight"))
    values = numpy_helper.to_array(weight).copy()
    values.flat[:3] = [1e-9, -3e5, 0.0]
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    half = to_float16_keep_io(model)
    converted = numpy_helper.to_array(next(t for t in half.graph.initializer if t.name == weight.name))
    assert converted.dtype == np.float16
    assert converted.flat[0] == np.float16(MIN_POSITIVE)
    assert converted.flat[1] == np.float16(-MAX_FINITE)
    assert converted.flat[2] == 0.0
    np.testing.assert_allclose(converted.flat[3:].astype(np.float64), values.flat[3:], rtol=FP16_STEP, atol=1e-7)
    assert model.graph.initializer[0].data_type == TensorProto.FLOAT, "the source model is left alone"


def test_cli_builds_deep_models_by_default_and_by_name(tmp_path) -> None:
    from models.__main__ import _make_parser, _parse_names
    from models.__main__ import main as models_main

    assert _parse_names(_make_parser(), None) == models.ALL_NAMES
    assert models_main(["build", str(tmp_path), "--only", "unet3d_deep_fp16io"]) == 0
    written = onnx.load(tmp_path / "unet3d_deep_fp16io.onnx")
    assert written.SerializeToString() == models.build("unet3d_deep_fp16io").SerializeToString()
