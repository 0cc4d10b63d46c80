"""External-data models are folded lazily: weights stay in their data files until a fold reads them, and
saving copies the untouched ones from file to file. Real files in tmp_path, real onnxruntime."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

from bnfold.cli.main import cli
from bnfold.errors import ModelLoadError, OutputWriteError, UnsafeExternalDataError, UsageError
from bnfold.fold import fold_math
from bnfold.io import model_file as io
from bnfold.io.lazy_data import DataFolder
from bnfold.optimizer import optimize
from tests.builders import GraphBuilder, feeds_for, op_count, run
from tests.io.test_external_data import write_external_model

EXTERNAL = TensorProto.EXTERNAL


def conv_bn_conv() -> onnx.ModelProto:
    """x -> Conv(3->16) -> BN -> Relu -> Conv(16->16) -> y: one fold, and one weight no fold touches."""
    b = GraphBuilder(seed=11)
    x = b.input("x", [1, 3, 8, 8])
    h = b.node("Relu", [b.bn(b.conv(x, 16))], name="relu")
    b.channels[h] = 16
    b.output(b.conv(h, 16, name="last"), shape=[1, 16, 4, 4])
    return b.build()


def save_external(model: onnx.ModelProto, path: Path, location: str) -> Path:
    """Every tensor, even the smallest, in ``location`` beside ``path`` (``model`` itself is left as it was)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=0)
    return path


@pytest.fixture
def original() -> onnx.ModelProto:
    return conv_bn_conv()


@pytest.fixture
def source(tmp_path: Path, original: onnx.ModelProto) -> Path:
    (tmp_path / "in").mkdir()
    return save_external(original, tmp_path / "in" / "model.onnx", "weights.bin")


def entries(tensor: TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def payload(model_path: Path, tensor: TensorProto) -> bytes:
    """The bytes a tensor's external data entries point at, read straight from the file."""
    where = entries(tensor)
    with open(model_path.parent / where["location"], "rb") as handle:
        handle.seek(int(where.get("offset", "0")))
        return handle.read(int(where["length"]))


def initializer(model: onnx.ModelProto, name: str) -> TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def conv_weights(model: onnx.ModelProto) -> tuple[str, str]:
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    return convs[0].input[1], convs[-1].input[1]


def stray_temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


def cli_optimize(*args: object):
    return CliRunner().invoke(cli, ["optimize", *map(str, args)])


# ---------------------------------------------------------------- loading and folding hold no payloads

def test_lazy_load_leaves_every_initializer_in_its_file(source: Path) -> None:
    model, external = io.load_model_and_layout(source, lazy=True)
    assert external and model.graph.initializer
    for tensor in model.graph.initializer:
        assert tensor.data_location == EXTERNAL and not tensor.HasField("raw_data"), tensor.name
    eager = io.load_model(source)
    assert all(t.HasField("raw_data") for t in eager.graph.initializer)  # what lazy loading avoids


def test_lazy_load_reads_attribute_tensors_but_not_initializers(tmp_path: Path) -> None:
    """Only initializers are read on demand; a Constant's external value is read at load, as before."""
    model, _ = io.load_model_and_layout(write_external_model(tmp_path), lazy=True)
    constant = model.graph.node[0].attribute[0].t
    assert constant.HasField("raw_data") and constant.data_location != EXTERNAL
    assert model.graph.initializer[0].data_location == EXTERNAL
    np.testing.assert_array_equal(DataFolder(tmp_path).array(model.graph.initializer[0]),
                                  numpy_helper.to_array(io.load_model(tmp_path / "model.onnx").graph.initializer[0]))


def test_only_folded_tensors_hold_data_after_the_fold(source: Path) -> None:
    result = optimize(source, verify=False)
    folded, untouched = conv_weights(result.model)
    assert len(result.report.applied) == 1 and op_count(result.model, "BatchNormalization") == 0
    weight = initializer(result.model, folded)
    assert weight.HasField("raw_data") and weight.data_location != EXTERNAL and not weight.external_data
    kept = initializer(result.model, untouched)
    assert kept.data_location == EXTERNAL and not kept.HasField("raw_data")
    assert result.external_folder == source.parent and result.source_external_data
    assert result.report.before.weight_bytes > result.report.after.weight_bytes > 0  # sized without reading


# ---------------------------------------------------------------- saving copies what the fold left alone

def test_folded_output_runs_and_matches_the_original(source: Path, original: onnx.ModelProto,
                                                     tmp_path: Path) -> None:
    target = tmp_path / "out.onnx"
    result = cli_optimize(source, "-o", target, "--no-verify", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == ["in", "out.onnx", "out.onnx.data"]
    assert op_count(io.load_model(target), "BatchNormalization") == 0
    feeds = feeds_for(original)
    expected, got = run(original, feeds)[0], run(str(target), feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_unchanged_payloads_are_copied_byte_for_byte(source: Path, tmp_path: Path) -> None:
    result = optimize(source, verify=False)
    target = tmp_path / "out.onnx"
    io.save_model(result.model, target, external_data=True, source_folder=result.external_folder)
    untouched = conv_weights(result.model)[1]
    before = initializer(io.load_model(source, load_external_data=False), untouched)
    after = initializer(io.load_model(target, load_external_data=False), untouched)
    assert entries(after)["location"] == "out.onnx.data" and int(entries(after)["offset"]) % 64 == 0
    assert payload(target, after) == payload(source, before)


def test_lazy_and_eager_folds_write_identical_files(source: Path, tmp_path: Path) -> None:
    """Copying from the source file must give exactly what loading everything and writing it out gives."""
    lazy, eager = optimize(source, verify=False), optimize(io.load_model(source), verify=False)
    for name in ("lazy", "eager"):
        (tmp_path / name).mkdir()
    io.save_model(lazy.model, tmp_path / "lazy" / "m.onnx", external_data=True, source_folder=lazy.external_folder)
    io.save_model(eager.model, tmp_path / "eager" / "m.onnx", external_data=True)
    for name in ("m.onnx", "m.onnx.data"):
        assert (tmp_path / "lazy" / name).read_bytes() == (tmp_path / "eager" / name).read_bytes(), name


def test_in_place_replaces_the_data_file_it_reads_from(tmp_path: Path, original: onnx.ModelProto) -> None:
    path = save_external(original, tmp_path / "m.onnx", "m.onnx.data")  # the output's own data file name
    untouched = conv_weights(original)[1]
    before = payload(path, initializer(io.load_model(path, load_external_data=False), untouched))
    result = cli_optimize(path, "--in-place", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"] and not stray_temporaries(tmp_path)
    written = io.load_model(path, load_external_data=False)
    assert op_count(written, "BatchNormalization") == 0
    assert payload(path, initializer(written, untouched)) == before
    feeds = feeds_for(original)
    expected = run(original, feeds)[0]
    np.testing.assert_allclose(run(str(path), feeds)[0], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_lazy_model_saved_elsewhere_keeps_subfolder_data_readable(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    source = write_external_model(tmp_path, w_location="data/w.bin", b_location="data/w.bin")
    (tmp_path / "weights.bin").rename(tmp_path / "data" / "w.bin")
    model, _ = io.load_model_and_layout(source, lazy=True)
    (tmp_path / "out").mkdir()
    io.save_model(model, tmp_path / "out" / "m.onnx", source_folder=tmp_path)  # external data chosen for it
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 32)).astype(np.float32)}
    np.testing.assert_array_equal(run(str(tmp_path / "out" / "m.onnx"), feeds)[0], run(str(source), feeds)[0])


def test_saving_a_lazy_model_needs_its_source_folder_and_external_data(source: Path, tmp_path: Path) -> None:
    model, _ = io.load_model_and_layout(source, lazy=True)
    with pytest.raises(OutputWriteError, match="source_folder"):
        io.save_model(model, tmp_path / "a.onnx")
    with pytest.raises(OutputWriteError, match="single file"):
        io.save_model(model, tmp_path / "b.onnx", external_data=False, source_folder=source.parent)
    assert sorted(os.listdir(tmp_path)) == ["in"]


# ---------------------------------------------------------------- verification

def test_verification_of_a_lazy_model_passes(source: Path) -> None:
    result = optimize(source, samples=1)
    assert result.report.verification.status == "passed"
    assert result.verification is not None and result.verification.passed
    with pytest.raises(UsageError):
        result.to_bytes()


def test_faulty_fold_of_a_lazy_model_is_reverted(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fold_math.conv_bias

    def wrong_bias(bias, scale, shift):
        return real(bias, scale, shift) + 1.0

    monkeypatch.setattr(fold_math, "conv_bias", wrong_bias)
    result = optimize(source, samples=1)
    assert [r.rule for r in result.report.reverted] == ["conv_bn"]
    assert result.report.verification.status == "passed"
    assert all(t.data_location == EXTERNAL for t in result.model.graph.initializer)  # re-loaded lazily


# ---------------------------------------------------------------- refusals: before reading, and cleanly

def test_unsafe_locations_are_refused_by_the_lazy_load(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "secret.bin").write_bytes(b"s" * 8192)
    (tmp_path / "model" / "innocent.bin").symlink_to(tmp_path / "secret.bin")
    for location, why in (("../secret.bin", "'..'"), (str(tmp_path / "secret.bin"), "absolute path"),
                          ("innocent.bin", "symbolic link")):
        path = write_external_model(tmp_path / "model", w_location=location)
        with pytest.raises(UnsafeExternalDataError, match=why):
            io.load_model_and_layout(path, lazy=True)
        with pytest.raises(UnsafeExternalDataError, match=why):
            optimize(path, verify=False)


@pytest.mark.parametrize(("data_bytes", "message"), [(None, "does not exist"), (700, "too short")])
def test_missing_or_short_data_file_is_one_clean_error(tmp_path: Path, data_bytes: int | None, message: str) -> None:
    path = write_external_model(tmp_path, w_location="absent.bin" if data_bytes is None else "weights.bin",
                                data_bytes=data_bytes)
    with pytest.raises(UnsafeExternalDataError, match=message):
        io.load_model_and_layout(path, lazy=True)
    result = cli_optimize(path, "-q")
    assert result.exit_code == 3, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not path.with_name("model.folded.onnx").exists()


def test_data_file_cut_short_after_loading_is_refused_when_copied(source: Path, tmp_path: Path) -> None:
    result = optimize(source, verify=False)
    data = source.with_name("weights.bin")
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="too short"):
        io.save_model(result.model, tmp_path / "out.onnx", source_folder=result.external_folder)
    assert sorted(os.listdir(tmp_path)) == ["in"]  # no output, no temporaries
