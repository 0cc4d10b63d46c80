"""The sample-model builders: valid ONNX, runnable in onnxruntime, deterministic, trained-looking BN statistics."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import models
from models.__main__ import main as models_main
from models.params import BN_EPSILON

# (output shape with batch 1, input shape with batch 1) for the default (small) size.
EXPECTED_SHAPES = {
    "resnet18": ((1, 10), (1, 3, 64, 64)),
    "resnet50": ((1, 10), (1, 3, 64, 64)),
    "mobilenetv2": ((1, 10), (1, 3, 64, 64)),
    "vgg_bn": ((1, 10), (1, 3, 32, 32)),
    "densenet_block": ((1, 10), (1, 3, 64, 64)),
    "unet2d": ((1, 2, 64, 64), (1, 3, 64, 64)),
    "unet3d": ((1, 3, 16, 16, 16), (1, 1, 16, 16, 16)),
    "classifier_bn1d": ((1, 10), (1, 3, 32, 32)),
    "resnet18_fp16": ((1, 10), (1, 3, 64, 64)),
    "resnet101": ((1, 10), (1, 3, 64, 64)),
    "resnet101_fp16io": ((1, 10), (1, 3, 64, 64)),
    "densenet201": ((1, 10), (1, 3, 64, 64)),
    "densenet201_fp16io": ((1, 10), (1, 3, 64, 64)),
    "unet3d_deep": ((1, 3, 32, 32, 32), (1, 1, 32, 32, 32)),
    "unet3d_deep_fp16io": ((1, 3, 32, 32, 32), (1, 1, 32, 32, 32)),
}
# Post-BN activations are kept O(1) by construction; anything near these bounds means the stats generator drifted.
MAX_ABS_OUTPUT = 100.0
MIN_OUTPUT_STD = 1e-2


@pytest.fixture(scope="module", params=models.ALL_NAMES)
def built(request: pytest.FixtureRequest) -> tuple[str, onnx.ModelProto]:
    return request.param, models.build(request.param)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _bn_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Concatenated gamma, mean and var over every BatchNormalization in the model, as float64."""
    inits = {t.name: t for t in model.graph.initializer}
    parts: dict[str, list[np.ndarray]] = {"gamma": [], "mean": [], "var": []}
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            for key, name in zip(("gamma", "mean", "var"), (node.input[1], node.input[3], node.input[4]), strict=True):
                parts[key].append(numpy_helper.to_array(inits[name]).astype(np.float64))
    return {key: np.concatenate(values) for key, values in parts.items()}


def test_registry_is_complete() -> None:
    assert set(models.ALL_NAMES) == set(EXPECTED_SHAPES) == set(models.DESCRIPTIONS)
    assert models.ALL_NAMES == models.MODEL_NAMES + models.DEEP_NAMES
    assert all(len(text) > 20 for text in models.DESCRIPTIONS.values())
    with pytest.raises(ValueError, match="unknown model"):
        models.build("resnet1000")


def test_passes_full_checker(built: tuple[str, onnx.ModelProto]) -> None:
    _, model = built
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]


def test_batch_dim_symbolic_and_shapes_typed(built: tuple[str, onnx.ModelProto]) -> None:
    name, model = built
    out_shape, in_shape = EXPECTED_SHAPES[name]
    for value, shape in ((model.graph.input[0], in_shape), (model.graph.output[0], out_shape)):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "N"
        assert tuple(d.dim_value for d in dims[1:]) == shape[1:]
    assert len(model.graph.input) == len(model.graph.output) == 1


def test_runs_in_onnxruntime_with_finite_bounded_output(built: tuple[str, onnx.ModelProto]) -> None:
    name, model = built
    feeds = models.random_inputs(model, batch=2, seed=1)
    (output,) = _session(model).run(None, feeds)
    expected = (2, *EXPECTED_SHAPES[name][0][1:])
    assert output.shape == expected
    assert output.dtype == (np.float16 if name.endswith("fp16") else np.float32)
    values = output.astype(np.float64)
    assert np.isfinite(values).all()
    assert np.abs(values).max() < MAX_ABS_OUTPUT
    assert values.std() > MIN_OUTPUT_STD


def test_fp16_variant_is_float16_throughout() -> None:
    model = models.build("resnet18_fp16")
    float16 = onnx.TensorProto.FLOAT16
    assert {t.data_type for t in model.graph.initializer} == {float16}
    assert {v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)} == {float16}


def test_same_seed_same_bytes_other_seed_differs() -> None:
    for name in ("resnet18", "unet3d"):
        first = models.build(name, seed=3).SerializeToString()
        assert models.build(name, seed=3).SerializeToString() == first
        assert models.build(name, seed=4).SerializeToString() != first


def test_bn_statistics_look_trained(built: tuple[str, onnx.ModelProto]) -> None:
    _, model = built
    assert models.bn_count(model) > 0
    bn = _bn_arrays(model)
    assert bn["var"].min() > 0
    assert bn["var"].min() < 2e-5, "expected a few near-dead channels"
    assert np.log10(bn["var"].max() / bn["var"].min()) >= 5, "variances should span orders of magnitude"
    assert (bn["gamma"] < 0).any() and (bn["gamma"] > 0).mean() > 0.75
    assert 0.3 < bn["mean"].std() < 0.7
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            eps = next(a.f for a in node.attribute if a.name == "epsilon")
            assert eps == pytest.approx(BN_EPSILON, rel=1e-6)


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _bn_after(model: onnx.ModelProto, producer_op: str) -> bool:
    producers = _producers(model)
    return any(
        node.op_type == "BatchNormalization"
        and node.input[0] in producers
        and producers[node.input[0]].op_type == producer_op
        for node in model.graph.node
    )


def _has_depthwise_conv(model: onnx.ModelProto) -> bool:
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1:
            return True
    return False


@pytest.mark.parametrize(
    ("name", "producer_op"),
    [
        ("unet2d", "ConvTranspose"),
        ("unet3d", "ConvTranspose"),
        ("densenet_block", "Concat"),
        ("classifier_bn1d", "Gemm"),
        ("resnet50", "Conv"),
        ("vgg_bn", "Conv"),
    ],
)
def test_bn_follows_the_op_its_description_names(name: str, producer_op: str) -> None:
    assert _bn_after(models.build(name), producer_op)


def test_structural_features() -> None:
    assert _has_depthwise_conv(models.build("mobilenetv2"))
    assert not _has_depthwise_conv(models.build("resnet18"))
    assert any(n.op_type == "Add" for n in models.build("resnet50").graph.node)
    unet3d = models.build("unet3d")
    conv_weights = {n.input[1] for n in unet3d.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    assert {len(t.dims) for t in unet3d.graph.initializer if t.name in conv_weights} == {5}
    grouped = [n for n in models.build("unet2d").graph.node if n.op_type == "ConvTranspose"]
    assert any(a.name == "group" and a.i == 2 for n in grouped for a in n.attribute)


def test_cli_writes_requested_models(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    outdir = tmp_path / "out"
    assert models_main(["build", str(outdir), "--only", "vgg_bn,unet3d", "--seed", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["vgg_bn", "unet3d"]
    assert sorted(p.name for p in outdir.iterdir()) == ["unet3d.onnx", "vgg_bn.onnx"]
    written = onnx.load(outdir / "unet3d.onnx")
    assert written.SerializeToString() == models.build("unet3d", seed=2).SerializeToString()
    assert f"{models.bn_count(written)} BN" in lines[1]


def test_cli_rejects_unknown_name(tmp_path) -> None:
    with pytest.raises(SystemExit) as excinfo:
        models_main(["build", str(tmp_path), "--only", "resnet18,nope"])
    assert excinfo.value.code == 2
    assert not any(tmp_path.iterdir())
