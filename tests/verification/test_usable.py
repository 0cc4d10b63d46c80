"""Issue 14 item 4: a check that compared nothing, or only NaN/inf, is no PASS. Nothing comparable (0
elements, batch 0): FAIL, exit 1. Unusable inputs (NaN/inf feeds, a --range overflowing float32): exit 3."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from bnfold import optimize
from bnfold.cli.main import cli
from bnfold.errors import ExitCode, InputSpecError, VerificationFailed
from bnfold.verification.verifier import verify
from tests.builders import GraphBuilder


def _model() -> onnx.ModelProto:
    b = GraphBuilder(seed=1)
    x = b.input("x", ["N", 3, 8, 8])
    b.output(b.node("Relu", [b.bn(b.conv(x, 4))]), shape=["N", 4, 8, 8])
    return b.build()


def _zeroed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every conv weight zeroed: a broken candidate that only an empty check lets pass."""
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    conv = next(n for n in broken.graph.node if n.op_type == "Conv")
    weight = next(t for t in broken.graph.initializer if t.name == conv.input[1])
    weight.CopyFrom(onnx.numpy_helper.from_array(np.zeros(tuple(weight.dims), np.float32), weight.name))
    return broken


def test_batch_zero_is_nothing_comparable_not_a_pass():
    model = _model()
    report = verify(model, _zeroed(model), input_shapes={"x": [0, 3, 8, 8]})
    assert not report.passed
    assert report.reason.startswith("nothing comparable")
    assert sum(o.compared for o in report.outputs) == 0


@pytest.mark.parametrize("fill", [np.nan, np.inf])
def test_non_finite_inputs_are_unusable(fill, tmp_path):
    model = _model()
    path = tmp_path / "inputs.npz"
    np.savez(path, x=np.full((1, 3, 8, 8), fill, np.float32))
    with pytest.raises(InputSpecError, match="unusable inputs"):
        verify(model, _zeroed(model), inputs=path)


def test_range_overflowing_float32_is_unusable():
    model = _model()
    with pytest.raises(InputSpecError, match="NaN/inf"):
        verify(model, _zeroed(model), value_range=(0.0, 1e308))


def test_optimize_verification_refuses_empty_and_overflowing_checks():
    with pytest.raises(VerificationFailed, match="nothing comparable"):
        optimize(_model(), input_shapes={"x": [0, 3, 8, 8]})
    with pytest.raises(InputSpecError):
        optimize(_model(), value_range=(0.0, 1e308))


def test_cli_exit_codes_for_nothing_comparable_and_unusable_inputs(tmp_path):
    model = _model()
    onnx.save(model, tmp_path / "ref.onnx")
    onnx.save(_zeroed(model), tmp_path / "bad.onnx")
    args = ["verify", str(tmp_path / "ref.onnx"), str(tmp_path / "bad.onnx")]
    empty = CliRunner().invoke(cli, [*args, "--input-shape", "x:0x3x8x8"])
    assert empty.exit_code == ExitCode.FAILED and "nothing comparable" in empty.output
    rows = [line for line in empty.output.splitlines() if "0/0" in line]
    assert rows and all(line.endswith("empty") for line in rows), empty.output  # not "ok" beside a FAIL
    overflow = CliRunner().invoke(cli, [*args, "--range", "0,1e308"])
    assert overflow.exit_code == ExitCode.MODEL_ERROR and "unusable inputs" in overflow.output
    assert "Warning" not in overflow.stderr, overflow.stderr  # one Error line, no numpy overflow warning
