"""Loading refuses bad files with one typed, one-line error; saving is atomic and never leaves debris."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from bnfold.errors import ModelLoadError, OutputWriteError, UnsupportedModelError
from bnfold.io import model_file as io


def small_model(*, opset: int = 17, ir_version: int | None = None, extra_opsets: dict[str, int] | None = None,
                size: int = 8, seed: int = 0) -> onnx.ModelProto:
    """y = x @ w + b, with seeded weights (w is size*size floats)."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((size, size)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(size).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "small",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, size])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, size])],
        [w, b],
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets)
    if ir_version is not None:
        model.ir_version = ir_version
    return model


def run(model_or_path: onnx.ModelProto | Path, size: int = 8) -> np.ndarray:
    source = str(model_or_path) if isinstance(model_or_path, Path) else model_or_path.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(42).standard_normal((2, size)).astype(np.float32)
    return session.run(None, {"x": x})[0]


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def assert_one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# ---------------------------------------------------------------- round trip

def test_round_trip_small_model(tmp_path: Path) -> None:
    model = small_model()
    target = tmp_path / "m.onnx"
    io.save_model(model, target)
    loaded = io.load_model(target)
    assert loaded.SerializeToString() == model.SerializeToString()
    assert not io.uses_external_data(target)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    np.testing.assert_array_equal(run(target), run(model))


def test_serialized_bytes_are_written_as_given(tmp_path: Path) -> None:
    model = small_model()
    given = small_model(seed=1).SerializeToString()  # distinguishable from model's own bytes
    io.save_model(model, tmp_path / "m.onnx", serialized=given)
    assert (tmp_path / "m.onnx").read_bytes() == given


def test_new_file_respects_umask_and_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    io.write_text_atomic(tmp_path / "new.json", "{}")
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o666 & ~umask
    existing = tmp_path / "old.json"
    existing.write_text("old")
    existing.chmod(0o600)
    io.write_text_atomic(existing, "n\u00e9w")
    assert existing.read_text(encoding="utf-8") == "n\u00e9w"
    assert existing.stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------- unreadable inputs

def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as exc:
        io.load_model(tmp_path / "nope.onnx")
    assert_one_line(exc, "nope.onnx", "does not exist")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as exc:
        io.load_model(tmp_path)
    assert_one_line(exc, str(tmp_path), "is a directory")


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("empty", b"", "is empty"),
        ("random", np.random.default_rng(7).bytes(4096), "does not parse"),
        ("text", b"ir_version: 8\ngraph { node { op_type: 'Relu' } }\n", "does not parse"),
        ("truncated", small_model(size=64).SerializeToString()[:9000], "truncated"),
        ("no_graph", onnx.ModelProto(ir_version=8).SerializeToString(), "has no graph"),
        ("no_ir_version", onnx.ModelProto(graph=onnx.GraphProto(name="g")).SerializeToString(), "no IR version"),
        ("no_nodes_no_opset", onnx.ModelProto(ir_version=8, graph=onnx.GraphProto(name="g")).SerializeToString(),
         "neither nodes nor an opset"),
    ],
)
def test_not_an_onnx_model(tmp_path: Path, name: str, content: bytes, fragment: str) -> None:
    path = write_bytes(tmp_path / f"{name}.onnx", content)
    with pytest.raises(ModelLoadError) as exc:
        io.load_model(path)
    assert_one_line(exc, "not an ONNX model", str(path), fragment)


# ---------------------------------------------------------------- versions

@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        (small_model(ir_version=onnx.IR_VERSION + 1), "IR version"),
        (small_model(ir_version=2), "IR version 2"),
        (small_model(opset=onnx.defs.onnx_opset_version() + 1), "newer than the installed onnx"),
        (small_model(opset=6), f"needs opset {io.MIN_OPSET}+"),
        (small_model(extra_opsets={"ai.onnx.ml": 99}), "ai.onnx.ml opset 99"),
    ],
)
def test_unsupported_versions(tmp_path: Path, model: onnx.ModelProto, fragment: str) -> None:
    path = write_bytes(tmp_path / "m.onnx", model.SerializeToString())
    with pytest.raises(UnsupportedModelError) as exc:
        io.load_model(path)
    assert_one_line(exc, str(path), fragment)


def test_version_bounds_that_load(tmp_path: Path) -> None:
    for i, model in enumerate([small_model(opset=io.MIN_OPSET), small_model(opset=onnx.defs.onnx_opset_version()),
                               small_model(extra_opsets={"com.example.custom": 999})]):
        path = write_bytes(tmp_path / f"{i}.onnx", model.SerializeToString())
        assert io.load_model(path).opset_import[0].version == model.opset_import[0].version


def test_standard_nodes_without_ai_onnx_opset(tmp_path: Path) -> None:
    model = small_model()
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(ModelLoadError) as exc:
        io.load_model(write_bytes(tmp_path / "m.onnx", model.SerializeToString()))
    assert_one_line(exc, "imports no ai.onnx opset")


# ---------------------------------------------------------------- output errors

def test_save_into_missing_folder_fails_without_creating_it(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "m.onnx"
    with pytest.raises(OutputWriteError) as exc:
        io.save_model(small_model(), target)
    assert_one_line(exc, "output folder", "does not exist")
    assert not target.parent.exists()


def test_save_under_a_regular_file(tmp_path: Path) -> None:
    blocker = write_bytes(tmp_path / "file", b"x")
    with pytest.raises(OutputWriteError) as exc:
        io.save_model(small_model(), blocker / "m.onnx")
    assert_one_line(exc, "is not a folder")


def test_save_onto_a_directory(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").mkdir()
    with pytest.raises(OutputWriteError) as exc:
        io.save_model(small_model(), tmp_path / "m.onnx")
    assert_one_line(exc, "is a directory")


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in. Root ignores chmod, so as root use /sys, whose
    files sysfs refuses to create even for root; skip (visibly) where neither works."""
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    probe = Path("/sys") / f".bnfold-probe-{os.getpid()}"
    try:
        probe.touch()
    except OSError:
        return Path("/sys")
    probe.unlink()
    pytest.skip("running as root and no folder here refuses writes (chmod has no effect on root)")


def test_save_into_unwritable_folder(tmp_path: Path) -> None:
    folder = _unwritable_folder(tmp_path)
    try:
        with pytest.raises(OutputWriteError) as exc:
            io.save_model(small_model(), folder / "m.onnx")
        assert_one_line(exc, str(folder / "m.onnx"))
        assert any(reason in str(exc.value) for reason in ("Permission denied", "Read-only", "not permitted"))
        assert not (folder / "m.onnx").exists()
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o755)


def test_disk_full_is_an_output_error_and_cleans_up(tmp_path: Path) -> None:
    target = write_bytes(tmp_path / "report.json", b"old")

    def fill_disk(handle) -> None:
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputWriteError) as exc:
        io.atomic_write(target, fill_disk)
    assert_one_line(exc, str(target), os.strerror(errno.ENOSPC))
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["report.json"]


# ---------------------------------------------------------------- interruption

def test_keyboard_interrupt_midway_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = write_bytes(tmp_path / "m.onnx", b"old model")

    def interrupted(handle) -> None:
        handle.write(b"half of a new model")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(target, interrupted)
    assert target.read_bytes() == b"old model"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_sigterm_midway_unwinds_cleans_up_and_restores_handler(tmp_path: Path) -> None:
    target = write_bytes(tmp_path / "m.onnx", b"old model")
    received: list[int] = []
    # A recording handler, so that if the guard failed the test fails instead of pytest being killed.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        def terminated(handle) -> None:
            handle.write(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(2)  # the handler interrupts this sleep
            handle.write(b" and the rest")

        with pytest.raises(io.SignalTerminated) as exc:
            io.atomic_write(target, terminated)
        assert isinstance(exc.value, KeyboardInterrupt) and exc.value.signum == signal.SIGTERM
        assert received == []
        assert target.read_bytes() == b"old model"
        assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
        os.kill(os.getpid(), signal.SIGTERM)  # the test's own handler is back
        time.sleep(0.05)
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_signal_guard_keeps_ignored_signals_ignored_and_is_inert_off_main_thread() -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with io.SignalGuard():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
    seen: list[object] = []

    def in_thread() -> None:
        with io.SignalGuard():
            seen.append(signal.getsignal(signal.SIGTERM))

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    assert seen == [signal.getsignal(signal.SIGTERM)]


# ---------------------------------------------------------------- size estimate and the automatic choice

def test_model_bytes_size_is_close_to_serialised_size() -> None:
    then_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(np.ones(300, np.float32), "t"))],
        "then", [], [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [300])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["k"], ["e"])], "else", [],
        [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [300])],
        [numpy_helper.from_array(np.zeros(300, np.float32), "k")],
    )
    model = small_model(size=64)
    model.graph.node.append(helper.make_node("If", ["c"], ["z"], then_branch=then_branch, else_branch=else_branch))
    model.graph.input.append(helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []))
    model.graph.output.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [300]))
    actual = len(model.SerializeToString())
    estimate = io.model_bytes_size(model)
    assert actual <= estimate <= actual * 1.1 + 2048


def test_automatic_external_data_above_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_model(size=64)
    io.save_model(model, tmp_path / "single.onnx")
    assert sorted(os.listdir(tmp_path)) == ["single.onnx"]
    monkeypatch.setattr(io, "SINGLE_FILE_LIMIT", 10_000)  # stands in for protobuf's 2 GB
    io.save_model(model, tmp_path / "big.onnx")
    assert io.uses_external_data(tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size >= 64 * 64 * 4
    np.testing.assert_array_equal(run(tmp_path / "big.onnx", size=64), run(model, size=64))
    io.save_model(model, tmp_path / "forced.onnx", external_data=False)
    assert not io.uses_external_data(tmp_path / "forced.onnx")
