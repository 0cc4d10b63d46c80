"""External data: read only from inside the model's folder, checked before reading, written beside the model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.errors import OutputWriteError, UnsafeExternalDataError
from bnfold.io import model_file as io
from bnfold.io.external_data import iter_tensors

RNG_SEED = 3


def _weights(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(RNG_SEED)
    return rng.standard_normal((size, size)).astype(np.float32), rng.standard_normal(size).astype(np.float32)


def _model(w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    """y = x @ w + b, with b coming from a Constant node so that attribute tensors are covered too."""
    size = w.shape[0]
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(b, "b_value")),
         helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, size])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _make_external(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def write_external_model(folder: Path, *, w_location: str = "weights.bin", b_location: str = "weights.bin",
                         write_data: bool = True, data_bytes: int | None = None) -> Path:
    """Hand-written layout: 100 bytes of noise, w, 37 bytes of noise, b, noise -- so reading whole files or
    wrong ranges gives wrong numbers."""
    w, b = _weights()
    model = _model(w, b)
    noise = np.random.default_rng(RNG_SEED + 1).bytes(100)
    w_offset, b_offset = 100, 100 + w.nbytes + 37
    data = noise + w.tobytes() + noise[:37] + b.tobytes() + noise
    _make_external(model.graph.initializer[0], w_location, w_offset, w.nbytes)
    _make_external(model.graph.node[0].attribute[0].t, b_location, b_offset, b.nbytes)
    if write_data:
        (folder / "weights.bin").write_bytes(data if data_bytes is None else data[:data_bytes])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def run(source: onnx.ModelProto | Path) -> np.ndarray:
    feed = {"x": np.random.default_rng(9).standard_normal((2, 32)).astype(np.float32)}
    data = str(source) if isinstance(source, Path) else source.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def external_locations(path: Path) -> list[str]:
    model = io.load_model(path, load_external_data=False)
    return [entry.value for _, t in iter_tensors(model) for entry in t.external_data if entry.key == "location"]


# ---------------------------------------------------------------- reading

def test_loads_only_the_declared_ranges(tmp_path: Path) -> None:
    path = write_external_model(tmp_path)
    w, b = _weights()
    model = io.load_model(path)
    assert not io.has_external_data(model) and io.uses_external_data(path)
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), w)
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.node[0].attribute[0].t), b)
    np.testing.assert_array_equal(run(model), run(path))  # onnxruntime reading the files itself agrees


def test_without_loading_nothing_is_required_but_safety_is(tmp_path: Path) -> None:
    path = write_external_model(tmp_path, write_data=False)
    assert io.has_external_data(io.load_model(path, load_external_data=False))
    unsafe = write_external_model(tmp_path, w_location="../weights.bin", write_data=False)
    with pytest.raises(UnsafeExternalDataError):
        io.load_model(unsafe, load_external_data=False)


def test_data_inside_a_subfolder_and_through_an_inner_symlink(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    path = write_external_model(tmp_path, w_location="data/w.bin", b_location="link.bin")
    (tmp_path / "weights.bin").rename(tmp_path / "data" / "w.bin")
    (tmp_path / "link.bin").symlink_to(tmp_path / "data" / "w.bin")
    np.testing.assert_array_equal(run(io.load_model(path)), run(path))


# ---------------------------------------------------------------- refusing

def _refused(path: Path, *fragments: str) -> None:
    with pytest.raises(UnsafeExternalDataError) as exc:
        io.load_model(path)
    message = str(exc.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_parent_folder_location_is_refused_even_if_the_file_exists(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"s" * 4096)
    _refused(write_external_model(model_dir, w_location="../secret.bin"), "initializer 'w'", "'..'")
    _refused(write_external_model(model_dir, b_location="sub/../../secret.bin"), "Constant", "'..'")


def test_absolute_location_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s" * 4096)
    (tmp_path / "model").mkdir()
    _refused(write_external_model(tmp_path / "model", w_location=str(secret)), "absolute path")
    _refused(write_external_model(tmp_path / "model", w_location="C:\\secret.bin"), "absolute path")


def test_symlink_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "secret.bin").write_bytes(b"s" * 4096)
    (tmp_path / "model" / "innocent.bin").symlink_to(tmp_path / "secret.bin")
    _refused(write_external_model(tmp_path / "model", w_location="innocent.bin"), "symbolic link", "outside")


def test_missing_data_file_names_tensor_and_file(tmp_path: Path) -> None:
    path = write_external_model(tmp_path, w_location="absent.bin")
    _refused(path, "initializer 'w'", "'absent.bin'", "does not exist")


def test_short_data_file_names_tensor_and_file(tmp_path: Path) -> None:
    path = write_external_model(tmp_path, data_bytes=700)  # w ends at byte 100 + 4096
    _refused(path, "initializer 'w'", "'weights.bin'", "has 700 bytes", "too short")


def test_length_that_contradicts_the_shape(tmp_path: Path) -> None:
    path = write_external_model(tmp_path)
    model = onnx.load(path, load_external_data=False)
    model.graph.initializer[0].external_data[2].value = "12"
    path.write_bytes(model.SerializeToString())
    _refused(path, "declares 12 bytes", "need 4096")


def test_unsafe_location_inside_a_subgraph_is_refused(tmp_path: Path) -> None:
    secret = np.ones(64, np.float32)
    (tmp_path / "secret.bin").write_bytes(secret.tobytes())
    (tmp_path / "model").mkdir()
    inner = numpy_helper.from_array(secret, "k")
    _make_external(inner, "../secret.bin", 0, secret.nbytes)
    branch = helper.make_graph([helper.make_node("Identity", ["k"], ["o"])], "branch", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, [64])], [inner])
    loop_body = helper.make_graph([helper.make_node("If", ["c"], ["o"], then_branch=branch, else_branch=branch)],
                                  "body", [], [helper.make_tensor_value_info("o", TensorProto.FLOAT, [64])])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=loop_body, else_branch=loop_body)],
                              "outer", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])])
    path = tmp_path / "model" / "nested.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    _refused(path, "initializer 'k'", "'..'")


# ---------------------------------------------------------------- writing

def test_save_with_external_data_keeps_it_and_stores_a_relative_location(tmp_path: Path) -> None:
    source = write_external_model(tmp_path)
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "folded.onnx"
    loaded = io.load_model(source)
    io.save_model(loaded, target, external_data=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["folded.onnx", "folded.onnx.data"]
    assert set(external_locations(target)) == {"folded.onnx.data"}  # w only: b (128 bytes) stays inline
    assert len(external_locations(target)) == 1
    assert io.load_model(target).SerializeToString() == loaded.SerializeToString()
    np.testing.assert_array_equal(run(target), run(source))


def test_external_model_saved_as_one_file_and_back(tmp_path: Path) -> None:
    loaded = io.load_model(write_external_model(tmp_path))
    io.save_model(loaded, tmp_path / "single.onnx", external_data=False)
    assert not io.uses_external_data(tmp_path / "single.onnx")
    io.save_model(io.load_model(tmp_path / "single.onnx"), tmp_path / "again.onnx", external_data=True)
    assert io.uses_external_data(tmp_path / "again.onnx")
    np.testing.assert_array_equal(run(tmp_path / "again.onnx"), run(loaded))


def test_subgraph_and_typed_field_tensors_go_external(tmp_path: Path) -> None:
    values = np.arange(512, dtype=np.float32)
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [512], values.tolist())  # float_data, not raw_data
    branch = helper.make_graph([helper.make_node("Identity", ["typed"], ["o"])], "branch", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, [512])], [typed])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
                              "outer", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [512])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    io.save_model(model, tmp_path / "if.onnx", external_data=True)
    assert model.SerializeToString() == before  # the caller's model is not modified
    assert external_locations(tmp_path / "if.onnx") == ["if.onnx.data", "if.onnx.data"]
    session = ort.InferenceSession(str(tmp_path / "if.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"c": np.array(True)})[0], values)
    reloaded = io.load_model(tmp_path / "if.onnx")
    np.testing.assert_array_equal(numpy_helper.to_array(reloaded.graph.node[0].attribute[0].g.initializer[0]), values)


def test_interrupted_external_save_keeps_the_old_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_external_model(tmp_path)
    model = io.load_model(source)
    io.save_model(model, tmp_path / "out.onnx", external_data=True)
    old = {name: (tmp_path / name).read_bytes() for name in ("out.onnx", "out.onnx.data")}
    real_externalize = io.externalize

    def externalize_then_interrupt(*args, **kwargs):
        real_externalize(*args, **kwargs)  # the data file is fully written when the interrupt lands
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "externalize", externalize_then_interrupt)
    changed = io.load_model(tmp_path / "out.onnx")
    changed.graph.initializer[0].raw_data = np.zeros((32, 32), np.float32).tobytes()
    with pytest.raises(KeyboardInterrupt):
        io.save_model(changed, tmp_path / "out.onnx", external_data=True)
    assert {name: (tmp_path / name).read_bytes() for name in old} == old
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "out.onnx", "out.onnx.data", "weights.bin"]


def test_saving_a_model_with_unloaded_external_data_is_refused(tmp_path: Path) -> None:
    unloaded = io.load_model(write_external_model(tmp_path), load_external_data=False)
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputWriteError) as exc:
        io.save_model(unloaded, tmp_path / "out" / "m.onnx")
    assert "never loaded" in str(exc.value)
    assert os.listdir(tmp_path / "out") == []


def test_size_estimate_of_an_unloaded_model_excludes_the_data(tmp_path: Path) -> None:
    path = write_external_model(tmp_path)
    unloaded, loaded = io.load_model(path, load_external_data=False), io.load_model(path)
    assert io.model_bytes_size(unloaded) < io.model_bytes_size(loaded) - 1000
