"""Provenance in metadata_props: written unless --no-metadata, user entries kept, re-runs byte-identical."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from bnfold import __version__, optimize
from bnfold.cli.main import cli
from tests.test_inspection import conv_bn_model

KEYS = ("bnfold.version", "bnfold.folds", "bnfold.verification")


def invoke(*args):
    return CliRunner().invoke(cli, ["optimize", *map(str, args)])


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


@pytest.fixture
def source(tmp_path) -> Path:
    model = conv_bn_model()
    model.metadata_props.add(key="author", value="the user")
    model.metadata_props.add(key="bnfold.folds", value="stale entry from an older run")
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def test_output_records_version_folds_and_verification_and_keeps_user_entries(source, tmp_path):
    out = tmp_path / "out.onnx"
    assert invoke(source, "-o", out, "-q").exit_code == 0
    entries = onnx.load(out).metadata_props
    assert [p.key for p in entries] == ["author", *KEYS]  # the stale entry replaced, not duplicated
    values = metadata(out)
    assert values["author"] == "the user"
    assert values["bnfold.version"] == __version__
    assert values["bnfold.folds"] == "conv_bn=1"
    assert values["bnfold.verification"].startswith("passed; worst output max abs error")


def test_no_metadata_adds_nothing(source, tmp_path):
    out = tmp_path / "out.onnx"
    assert invoke(source, "-o", out, "--no-metadata", "-q").exit_code == 0
    assert metadata(out) == {"author": "the user", "bnfold.folds": "stale entry from an older run"}
    assert onnx.load(out).graph.node[0].op_type == "Conv"  # folded all the same


@pytest.mark.parametrize("flags", [[], ["--no-metadata"]], ids=["metadata", "no-metadata"])
def test_optimizing_the_output_again_is_byte_identical(source, tmp_path, flags):
    first, second = tmp_path / "first.onnx", tmp_path / "second.onnx"
    assert invoke(source, "-o", first, "-q", *flags).exit_code == 0
    rerun = invoke(first, "-o", second, *flags)
    assert rerun.exit_code == 0, rerun.output
    assert "Folded nothing." in rerun.stdout
    assert second.read_bytes() == first.read_bytes()


def test_api_second_pass_applies_nothing_and_serialized_bytes_carry_the_entries():
    first = optimize(conv_bn_model())
    assert [a.rule for a in first.report.applied] == ["conv_bn"]
    parsed = onnx.ModelProto()
    parsed.ParseFromString(first.to_bytes())
    assert parsed == first.model  # provenance appended to the verified bytes equals the in-memory model
    assert [p.key for p in parsed.metadata_props] == list(KEYS)
    second = optimize(first.model)
    assert second.report.applied == () and not second.report.changed
    assert second.model.SerializeToString() == first.model.SerializeToString()
