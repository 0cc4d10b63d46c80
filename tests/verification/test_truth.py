"""--truth float64: both models measured against the reference evaluated in float64."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

from bnfold import optimize
from bnfold.cli.main import cli
from bnfold.verification.truth import compare_to_truth, upcast_to_float64
from tests.builders import GraphBuilder, feeds_for


def conv_bn_model() -> onnx.ModelProto:
    b = GraphBuilder(seed=2)
    y = b.bn(b.conv(b.input("x", [1, 3, 8, 8]), 4, name="conv1"))
    b.output(b.node("Relu", [y]), shape=[1, 4, 8, 8])
    return b.build()


def test_upcast_makes_every_float_tensor_double():
    wide = upcast_to_float64(conv_bn_model())
    assert all(t.data_type == TensorProto.DOUBLE for t in wide.graph.initializer)
    assert wide.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    assert wide.graph.output[0].type.tensor_type.elem_type == TensorProto.DOUBLE


def test_folded_model_is_as_close_to_the_truth_as_the_original():
    model = conv_bn_model()
    folded = optimize(model, verify=False).model
    feeds = [feeds_for(model, seed) for seed in range(2)]
    (row,) = compare_to_truth(model, folded, feeds)
    assert row.reference_error < 1e-6 and row.candidate_error < 1e-6
    assert row.candidate_error <= 4 * row.reference_error + 1e-7


def test_a_faulty_candidate_is_far_from_the_truth():
    model = conv_bn_model()
    folded = optimize(model, verify=False).model
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    weight = next(t for t in folded.graph.initializer if t.name == conv.input[1])
    value = numpy_helper.to_array(weight).copy()
    value[0] *= 1.01
    weight.CopyFrom(numpy_helper.from_array(value, weight.name))
    (row,) = compare_to_truth(model, folded, [feeds_for(model)])
    assert row.candidate_error > 1e-3 > row.reference_error


def test_cli_prints_and_records_the_truth(tmp_path):
    model = conv_bn_model()
    reference, candidate, report = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "r.json"
    onnx.save(model, reference)
    onnx.save(optimize(model, verify=False).model, candidate)
    result = CliRunner().invoke(cli, ["verify", str(reference), str(candidate), "--truth", "float64",
                                      "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "vs float64 truth: output" in result.output
    rows = json.loads(report.read_text())["truth"]
    assert rows[0]["output"] == model.graph.output[0].name and np.isfinite(rows[0]["candidate_error"])


def test_grouped_conv_transpose_runs_in_the_float64_evaluator():
    b = GraphBuilder(seed=1)
    x = b.input("x", [1, 4, 5, 5])
    b.output(b.bn(b.conv_transpose(x, 6, group=2, strides=[2, 2], pads=[1, 1, 0, 0], output_padding=[1, 1])),
             shape=None)
    model = b.build()
    folded = optimize(model, verify=False).model
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    (row,) = compare_to_truth(model, folded, [feeds_for(model, seed=s, batch=1) for s in (1, 2)])
    # a wrong grouping would be off by the output's own size; float32 rounding is ~1e-7 of it
    assert row.truth_magnitude > 1 and row.reference_error < 1e-6 and row.candidate_error < 1e-6


def test_a_model_the_evaluator_cannot_run_is_one_clear_error(tmp_path):
    from onnx import helper

    b = GraphBuilder(seed=1)
    y = b.bn(b.conv(b.input("x", [1, 3, 6, 6]), 4))
    b.nodes.append(helper.make_node("Gelu", [y], ["gelu_out"], domain="com.microsoft"))  # onnxruntime only
    b.output("gelu_out", shape=None)
    model = b.build()
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    result = CliRunner().invoke(cli, ["verify", str(path), str(path), "--truth", "float64"])
    assert result.exit_code == 3, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "reference evaluator" in errors[0] and "Traceback" not in result.output
