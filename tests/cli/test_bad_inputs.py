"""Hostile model files given to every command: one `Error:` line, the documented exit code, nothing written.

Each case is a file (or folder) built in ``tmp_path/case``; every command must refuse it with exit 3 (2 where
click rejects the path as a usage error), exactly one line starting with ``Error:`` on stderr, no traceback,
and leave every byte under ``tmp_path`` as it was (no output, no temporary file, the input unchanged).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import models
from bnfold.cli.main import cli
from tests.builders import GraphBuilder

BENCH_FAST = ["--warmup", "0", "--iterations", "1", "--opt-level", "disable", "--quiet"]
# command variant -> (click command, argv given the hostile model and a good model)
COMMANDS: dict[str, tuple[str, Callable[[str, str], list[str]]]] = {
    "optimize": ("optimize", lambda bad, good: [bad]),
    "verify-reference": ("verify", lambda bad, good: [bad, good]),
    "verify-candidate": ("verify", lambda bad, good: [good, bad]),
    "bench": ("bench", lambda bad, good: [bad, *BENCH_FAST]),
    "bench-compare": ("bench", lambda bad, good: [good, "--compare", bad, *BENCH_FAST]),
    "inspect": ("inspect", lambda bad, good: [bad]),
}
OUTSIDE_DATA = "outside.bin"  # a real data file next to the case folder, reachable only by leaving it


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: files by sha256, links by target; nothing followed out of ``root``."""
    entries = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                entries[key] = "-> " + os.readlink(path)
            elif path.is_file():
                entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                entries[key] = "dir"
    return entries


def conv_bn() -> onnx.ModelProto:
    b = GraphBuilder(seed=2)
    x = b.input("x", [1, 3, 8, 8])
    b.output(b.bn(b.conv(x, 4)), shape=[1, 4, 6, 6])
    return b.build()


def save_external(model: onnx.ModelProto, path: Path, location: str = "data.bin") -> None:
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=0)


def relocate(path: Path, location: str) -> None:
    """Point every external tensor of the model at ``path`` to ``location`` (the data itself is not touched)."""
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, path)


# ------------------------------------------------------------------ the cases: (folder) -> model path

def empty(folder: Path) -> Path:
    (folder / "m.onnx").write_bytes(b"")
    return folder / "m.onnx"


def random_bytes(folder: Path) -> Path:
    (folder / "m.onnx").write_bytes(np.random.default_rng(0).bytes(10_000))
    return folder / "m.onnx"


def truncated(folder: Path) -> Path:
    data = models.build("resnet18").SerializeToString()
    (folder / "m.onnx").write_bytes(data[: len(data) // 2])
    return folder / "m.onnx"


def text_file(folder: Path) -> Path:
    (folder / "m.onnx").write_text("ir_version: 8\ngraph { name: 'not really' }\n")
    return folder / "m.onnx"


def missing(folder: Path) -> Path:
    return folder / "nothing-here.onnx"


def directory(folder: Path) -> Path:
    (folder / "m.onnx").mkdir()
    return folder / "m.onnx"


def opset_99(folder: Path) -> Path:
    model = conv_bn()
    model.opset_import[0].version = 99
    onnx.save(model, folder / "m.onnx")
    return folder / "m.onnx"


def opset_5(folder: Path) -> Path:
    model = conv_bn()
    model.opset_import[0].version = 5
    onnx.save(model, folder / "m.onnx")
    return folder / "m.onnx"


def other_protobuf(folder: Path) -> Path:
    """A valid protobuf that is not a model (a serialised tensor)."""
    tensor = onnx.numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "t")
    (folder / "m.onnx").write_bytes(tensor.SerializeToString())
    return folder / "m.onnx"


def ir_99(folder: Path) -> Path:
    model = conv_bn()
    model.ir_version = 99
    onnx.save(model, folder / "m.onnx")
    return folder / "m.onnx"


def external_parent(folder: Path) -> Path:
    save_external(conv_bn(), folder / "m.onnx")
    (folder / "data.bin").rename(folder.parent / OUTSIDE_DATA)
    relocate(folder / "m.onnx", f"../{OUTSIDE_DATA}")
    return folder / "m.onnx"


def external_absolute(folder: Path) -> Path:
    save_external(conv_bn(), folder / "m.onnx")
    relocate(folder / "m.onnx", "/etc/passwd")
    return folder / "m.onnx"


def external_symlink(folder: Path) -> Path:
    save_external(conv_bn(), folder / "m.onnx")
    (folder / "data.bin").rename(folder.parent / OUTSIDE_DATA)
    (folder / "data.bin").symlink_to(folder.parent / OUTSIDE_DATA)
    return folder / "m.onnx"


def external_missing(folder: Path) -> Path:
    save_external(conv_bn(), folder / "m.onnx")
    (folder / "data.bin").unlink()
    return folder / "m.onnx"


def external_short(folder: Path) -> Path:
    save_external(conv_bn(), folder / "m.onnx")
    data = (folder / "data.bin").read_bytes()
    (folder / "data.bin").write_bytes(data[: len(data) // 2])
    return folder / "m.onnx"


def _saved(folder: Path, model: onnx.ModelProto) -> Path:
    with open(folder / "m.onnx", "wb") as handle:  # as given: onnx.save would not check either, but be plain
        handle.write(model.SerializeToString())
    return folder / "m.onnx"


def _tiny(nodes: list[onnx.NodeProto], initializers=(), x_shape=(1, 3, 8, 8)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "invalid", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def cycle(folder: Path) -> Path:
    return _saved(folder, _tiny([helper.make_node("Add", ["x", "c"], ["y"]), helper.make_node("Relu", ["y"], ["c"])]))


def dangling_read(folder: Path) -> Path:
    return _saved(folder, _tiny([helper.make_node("Add", ["x", "ghost"], ["y"])]))


def two_producers(folder: Path) -> Path:
    return _saved(folder, _tiny([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["y"])]))


def conv_weight_rank(folder: Path) -> Path:
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    return _saved(folder, _tiny([helper.make_node("Conv", ["x", "w"], ["y"])], [weight]))


def bn_six_inputs(folder: Path) -> Path:
    model = conv_bn()
    bn = next(node for node in model.graph.node if node.op_type == "BatchNormalization")
    bn.input.append(bn.input[1])
    return _saved(folder, model)


def bn_string_parameters(folder: Path) -> Path:
    model = conv_bn()
    bn = next(node for node in model.graph.node if node.op_type == "BatchNormalization")
    scale = next(t for t in model.graph.initializer if t.name == bn.input[1])
    scale.CopyFrom(helper.make_tensor(scale.name, TensorProto.STRING, [4], [b"a", b"b", b"c", b"d"]))
    return _saved(folder, model)


def _conv_weight(model: onnx.ModelProto) -> TensorProto:
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    return next(t for t in model.graph.initializer if t.name == conv.input[1])


def raw_data_short(folder: Path) -> Path:
    model = conv_bn()
    weight = _conv_weight(model)
    weight.raw_data = weight.raw_data[:-4]
    return _saved(folder, model)


def data_type(value: int) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        model = conv_bn()
        _conv_weight(model).data_type = value
        return _saved(folder, model)
    return build


def dims_2_40(folder: Path) -> Path:
    model = conv_bn()
    weight = _conv_weight(model)
    del weight.dims[:]
    weight.dims.extend([2**20, 2**20, 1, 1])
    return _saved(folder, model)


CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    # name: (builder, words the one error line must contain)
    "empty": (empty, "empty"),
    "random_bytes": (random_bytes, "not an ONNX model"),
    "truncated": (truncated, "not an ONNX model"),
    "text_file": (text_file, "not an ONNX model"),
    "missing": (missing, "does not exist"),
    "directory": (directory, "directory"),
    "opset_99": (opset_99, "opset 99"),
    "opset_5": (opset_5, "opset 5"),
    "other_protobuf": (other_protobuf, "not an ONNX model"),
    "ir_99": (ir_99, "IR version 99"),
    "external_parent": (external_parent, "'..'"),
    "external_absolute": (external_absolute, "absolute path"),
    "external_symlink": (external_symlink, "outside the model's folder"),
    "external_missing": (external_missing, "does not exist"),
    "external_short": (external_short, "too short"),
    # invalid graphs and malformed tensors (issue 14, items 6 and 8): exit 3 naming the problem, before folding
    "cycle": (cycle, "cycle"),
    "dangling_read": (dangling_read, "nothing produces"),
    "two_producers": (two_producers, "two producers"),
    "conv_weight_rank": (conv_weight_rank, "rank 2"),
    "bn_six_inputs": (bn_six_inputs, "input size 6"),
    "bn_string_parameters": (bn_string_parameters, "STRING"),
    "raw_data_short": (raw_data_short, "bytes of raw data"),
    "data_type_0": (data_type(0), "data type 0"),
    "data_type_999": (data_type(999), "data type 999"),
    "dims_2_40": (dims_2_40, "dims [1048576, 1048576, 1, 1]"),
}
INVALID = ("cycle", "dangling_read", "two_producers", "conv_weight_rank", "bn_six_inputs", "bn_string_parameters",
           "raw_data_short", "data_type_0", "data_type_999", "dims_2_40")
CLICK_PATH_CHECKS = {"missing", "directory"}  # a command may let click refuse these as usage errors (exit 2)
# `verify` reads models through bnfold.run.sessions, not bnfold.io.load_model: onnxruntime's own checks refuse most
# cases (with its own words), so for verify only the exit code, the single line and "nothing written" are held.
WORDED = {"optimize", "inspect", "bench", "bench-compare"}


# for optimize a directory means folder mode: see test_optimize_on_an_empty_folder
PAIRS = [(command, case) for command in sorted(COMMANDS) for case in sorted(CASES)
         if (command, case) != ("optimize", "directory")]


@pytest.mark.parametrize(("command", "case"), PAIRS)
def test_hostile_model_is_refused_cleanly(command: str, case: str, tmp_path: Path):
    name, argv = COMMANDS[command]
    folder = tmp_path / "case"
    folder.mkdir()
    good = tmp_path / "good.onnx"
    onnx.save(conv_bn(), good)
    build, words = CASES[case]
    model = build(folder)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(cli, [name, *argv(str(model), str(good))])
    allowed = {2, 3} if case in CLICK_PATH_CHECKS else {3}
    assert result.exit_code in allowed, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    if command in WORDED:
        assert words.lower() in errors[0].lower(), errors[0]
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert snapshot(tmp_path) == before


def test_optimize_on_an_empty_folder(tmp_path: Path):
    try:
        import bnfold.cli.folder  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("folder mode (bnfold/cli/folder.py) is not in the repo yet")
    folder = tmp_path / "models"
    folder.mkdir()
    result = CliRunner().invoke(cli, ["optimize", str(folder)])
    assert result.exit_code in {2, 3}, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output and "internal error" not in result.output
    assert snapshot(tmp_path) == {"models": "dir"}


def test_the_external_data_cases_are_valid_models_once_made_safe(tmp_path: Path):
    """Guards the cases above: the same files load when the data sits where it belongs."""
    from bnfold.io.model_file import load_model

    save_external(conv_bn(), tmp_path / "m.onnx")
    model = load_model(tmp_path / "m.onnx")
    assert model.graph.initializer[0].HasField("raw_data")
    onnx.checker.check_model(model)


@pytest.mark.parametrize("argv", [["optimize", "--no-verify"], ["optimize", "--check"], ["check"]])
@pytest.mark.parametrize("case", INVALID)
def test_invalid_graph_refused_by_every_mode(case: str, argv: list[str], tmp_path: Path):
    """The modes that never run onnxruntime refuse invalid graphs too (issue 14: they used to write them, exit 0)."""
    folder = tmp_path / "case"
    folder.mkdir()
    build, words = CASES[case]
    model = build(folder)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(cli, [*argv, str(model)])
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 3 and len(errors) == 1, result.output
    assert words.lower() in errors[0].lower() and "internal error" not in errors[0], errors[0]
    assert snapshot(tmp_path) == before


def test_the_invalid_graph_cases_differ_from_a_valid_model_only_in_their_flaw(tmp_path: Path):
    """Guards the cases above: the models they start from pass the graph check and run."""
    from bnfold.io.graph_check import check_graph

    check_graph(conv_bn())
    check_graph(_tiny([helper.make_node("Relu", ["x"], ["y"])]))
