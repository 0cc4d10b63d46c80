"""create_session: every model source, extra outputs without touching the caller's proto, clear errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bnfold.errors import ModelLoadError, RuntimeUnavailableError, UsageError
from bnfold.run.sessions import PROVIDERS, available_providers, create_session, load_graph
from tests.builders import GraphBuilder


def conv_bn_relu() -> onnx.ModelProto:
    b = GraphBuilder(seed=2)
    x = b.input("x", ["N", 3, 6, 6])
    hidden = b.bn(b.conv(x, 4, name="conv"), name="bn")
    b.output(b.node("Relu", [hidden], name="relu"))
    return b.build()


@pytest.fixture
def model() -> onnx.ModelProto:
    return conv_bn_relu()


FEED = {"x": np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)}


def test_proto_bytes_and_path_run_alike(model, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    results = [create_session(src).run(None, FEED)[0] for src in (model, model.SerializeToString(), path, str(path))]
    assert all(np.array_equal(results[0], r) for r in results[1:])
    assert results[0].shape == (2, 4, 4, 4) and (results[0] >= 0).all()


def test_extra_outputs_leave_the_callers_proto_untouched(model):
    before = model.SerializeToString()
    session = create_session(model, extra_outputs=["conv_out", "bn_out", "relu_out"])
    assert [o.name for o in session.get_outputs()] == ["relu_out", "conv_out", "bn_out"]
    conv, bn_out, relu = (session.run(["conv_out", "bn_out", "relu_out"], FEED))
    assert np.array_equal(np.maximum(bn_out, 0), relu) and not np.array_equal(conv, bn_out)
    assert model.SerializeToString() == before


def test_extra_outputs_from_a_path_find_external_data(model, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.data", size_threshold=0)
    monkeypatch.chdir(tmp_path)  # the external file must be found beside the model, not the working dir
    session = create_session(folder / "m.onnx", extra_outputs=["bn_out"])
    bn_out, relu = session.run(["bn_out", "relu_out"], FEED)
    assert np.array_equal(np.maximum(bn_out, 0), relu)
    assert load_graph(folder / "m.onnx").graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL


def test_unknown_extra_output_is_a_usage_error(model):
    with pytest.raises(UsageError, match="'nope'"):
        create_session(model, extra_outputs=["nope"])


def test_opt_levels_and_threads(model):
    outputs = [create_session(model, opt_level=level, threads=1).run(None, FEED)[0] for level in
               ("disable", "basic", "extended", "all")]
    for other in outputs[1:]:
        np.testing.assert_allclose(other, outputs[0], rtol=1e-5, atol=1e-5 * np.abs(outputs[0]).max())
    with pytest.raises(UsageError, match="optimisation level"):
        create_session(model, opt_level="max")
    with pytest.raises(UsageError, match="threads"):
        create_session(model, threads=0)


def test_providers(model):
    assert "cpu" in available_providers()
    with pytest.raises(UsageError, match="choose one of: cpu, cuda, tensorrt"):
        create_session(model, provider="tpu")
    missing = [p for p in PROVIDERS if p not in available_providers()]
    if not missing:
        pytest.skip("every provider is available here")
    with pytest.raises(RuntimeUnavailableError, match=r"available: .*cpu"):
        create_session(model, provider=missing[0])


def test_invalid_models_raise_one_line_load_errors(model, tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        create_session(tmp_path / "missing.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    for empty in (b"", tmp_path / "empty.onnx"):  # protobuf parses nothing into an empty message
        with pytest.raises(ModelLoadError, match="not an ONNX model"):
            load_graph(empty)
    with pytest.raises(ModelLoadError) as caught:
        create_session(b"not a model at all")
    assert "\n" not in str(caught.value) and "onnxruntime cannot load" in str(caught.value)
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(ModelLoadError, match="NoSuchOp") as caught:
        create_session(broken)
    assert "\n" not in str(caught.value)


def test_sessions_are_plain_onnxruntime_sessions(model):
    assert isinstance(create_session(model), ort.InferenceSession)


def test_a_proto_still_reading_external_data_is_refused_with_the_way_out(model, tmp_path):
    from bnfold.io.model_file import load_model

    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    lazy = load_model(tmp_path / "m.onnx", load_external_data=False)
    with pytest.raises(UsageError, match="pass the model's path"):
        create_session(lazy)
    assert create_session(tmp_path / "m.onnx").run(None, FEED)[0].shape == (2, 4, 4, 4)


@pytest.mark.parametrize("source", ["proto", "path"])
def test_arena_is_kept_unless_asked_off(model, tmp_path, source):
    onnx.save(model, tmp_path / "m.onnx")
    src = model if source == "proto" else tmp_path / "m.onnx"
    assert create_session(src).get_session_options().enable_cpu_mem_arena is True
    off = create_session(src, arena=False)
    assert off.get_session_options().enable_cpu_mem_arena is False and off.run(None, FEED)[0].shape == (2, 4, 4, 4)
