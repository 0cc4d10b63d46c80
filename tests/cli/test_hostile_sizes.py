"""Hostile sizes and values on the command line (issue 14, items 5, 8, 9): usage errors are exit 2, inputs that
could never fit are refused from an estimate before anything is allocated, a file over protobuf's limit is
refused from its size, and a scalar bool input (an If condition) is verified like any other."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from bnfold.cli.main import cli
from tests.builders import GraphBuilder


def invoke(*argv) -> tuple[int, list[str], str]:
    result = CliRunner().invoke(cli, [str(a) for a in argv])
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result.exit_code, errors, result.output


@pytest.fixture
def dynamic(tmp_path) -> Path:
    """Conv + BatchNormalization on an input with symbolic batch, height and width."""
    b = GraphBuilder(seed=4)
    b.output(b.bn(b.conv(b.input("x", ["N", 3, "H", "W"]), 4)), shape=None)
    path = tmp_path / "dynamic.onnx"
    onnx.save(b.build(), path)
    return path


@pytest.mark.parametrize("command", ["optimize", "verify"])
@pytest.mark.parametrize("option", ["--range=-inf,inf", "--range=-1e308,1e308", "--range=nan,1",
                                    f"--input-shape=x:1x3x{2**70}x8"])
def test_out_of_range_option_values_are_usage_errors(dynamic, command, option):
    argv = [dynamic] if command == "optimize" else [dynamic, dynamic]
    code, errors, output = invoke(command, *argv, option)
    assert code == 2, output
    assert ("--range" in output) if "range" in option else ("2^63-1" in output), output


@pytest.mark.parametrize("command", ["optimize", "verify"])
def test_a_huge_input_shape_is_refused_from_an_estimate(dynamic, tmp_path, command):
    argv = [dynamic, "-o", tmp_path / "out.onnx"] if command == "optimize" else [dynamic, dynamic]
    started = time.perf_counter()
    code, errors, output = invoke(command, *argv, "--input-shape", f"x:1x3x{2**20}x{2**20}")
    assert code == 3 and len(errors) == 1 and "inputs too large" in errors[0] and "GiB" in errors[0], output
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "out.onnx").exists()


def test_a_file_over_2_gib_is_refused_from_its_size(tmp_path):
    huge = tmp_path / "huge.onnx"
    with open(huge, "wb") as handle:  # sparse: no disk used, and nothing may read it
        handle.truncate(2**31 + 4096)
    for argv in (["optimize", huge, "--no-verify"], ["inspect", huge]):
        started = time.perf_counter()
        code, errors, output = invoke(*argv)
        assert code == 3 and len(errors) == 1 and "2.0 GiB, over protobuf's 2 GiB limit" in errors[0], output
        assert time.perf_counter() - started < 10


def if_condition_model() -> onnx.ModelProto:
    """Conv -> BatchNormalization -> If(c: a scalar bool input) choosing Relu or Neg of the result."""
    b = GraphBuilder(seed=5)
    h = b.bn(b.conv(b.input("x", [1, 3, 8, 8]), 4), name="bn")
    out = helper.make_tensor_value_info
    then_branch = helper.make_graph([helper.make_node("Relu", [h], ["t"])], "then", [],
                                    [out("t", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph([helper.make_node("Neg", [h], ["e"])], "else", [],
                                    [out("e", TensorProto.FLOAT, None)])
    cond = b.input("c", [], dtype=np.bool_)
    chosen = b.node("If", [cond], then_branch=then_branch, else_branch=else_branch)
    b.output(chosen, shape=None)
    return b.build()


def test_a_scalar_bool_if_condition_is_optimized_and_verified(tmp_path):
    source, target, report = tmp_path / "if.onnx", tmp_path / "if.folded.onnx", tmp_path / "r.json"
    onnx.save(if_condition_model(), source)
    code, errors, output = invoke("optimize", source, "-o", target, "--json", report, "--samples", "4")
    assert code == 0 and errors == [], output
    import json

    document = json.loads(report.read_text())
    assert document["verification"]["status"] == "passed", document["verification"]
    assert [f["node"] for f in document["applied"]] == ["bn"]
    code, errors, output = invoke("verify", source, target)
    assert code == 0 and "PASS" in output, output
