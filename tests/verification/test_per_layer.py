"""verify --per-layer: which tensors are compared, which node a FAIL names, what drift alone says."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bnfold import optimize
from bnfold.verification.verifier import verify
from tests.builders import GraphBuilder
from tests.verification import mutants as M
from tests.verification.deep_models import bn_names, deep_chain, hand_fold_faulty


def conv_bn_conv_bn(seed: int = 0) -> onnx.ModelProto:
    """x -> Conv -> BN -> Conv -> BN -> y: the first fold's output is read only by the second fold's Conv."""
    b = GraphBuilder(seed=seed)
    x = b.input("x", [1, 8, 10, 10])
    h = b.bn(b.conv(x, 16, name="conv1", pads=[1] * 4), name="bn1")
    b.channels[h] = 16
    b.output(b.bn(b.conv(h, 12, name="conv2", pads=[1] * 4), name="bn2"))
    return b.build()


def test_fold_output_read_only_by_another_fold_is_compared():
    """Regression (PP-OCRv4 det/rec, first conv): the Conv that took bn1's output name holds bn1's value, so it
    is compared, not skipped as an intermediate of a rewritten pair."""
    model = conv_bn_conv_bn()
    report = verify(model, optimize(model, verify=False).model, per_layer=True)
    assert report.passed, report.summary()
    assert [t.name for t in report.tensors] == ["bn1_out"]
    assert report.tensors[0].verdict == "pass" and "local" in report.tensors[0].tolerance


def test_fault_in_first_fold_is_named_at_its_own_output_not_the_next_fold():
    model = conv_bn_conv_bn()
    plain = optimize(model, verify=False)
    mutant = M.mutate(plain.model, plain.report.applied, "shift", "first")
    report = verify(model, mutant.model, per_layer=True)
    assert not report.passed
    assert report.first_divergence == {"tensor": "bn1_out", "node": mutant.node, "op_type": "Conv"}
    assert {t.name: t.verdict for t in report.outputs + report.tensors} == {"bn2_out": "drift", "bn1_out": "fail"}


def test_renamed_matmul_output_is_not_compared():
    """MatMul -> BN becomes MatMul(W') -> Add: the MatMul's output keeps its name but not its value."""
    b = GraphBuilder(seed=1)
    x = b.input("x", [4, 6])
    h = b.node("MatMul", [x, b.init(b.weight([6, 5]))], name="mm")
    b.output(b.bn(h, 5, name="bn"))
    model = b.build()
    folded = optimize(model, verify=False).model
    assert [n.op_type for n in folded.graph.node] == ["MatMul", "Add"]
    report = verify(model, folded, per_layer=True)
    assert report.passed, report.summary()
    assert "mm_out" not in [t.name for t in report.tensors]
    assert any("not compared" in note for note in report.notes)


def _if_model(then_scale: np.ndarray) -> onnx.ModelProto:
    """x -> If(true){x * scale} -> Relu -> ReduceMean(all) -> y: the If can't be recomputed alone."""
    then = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(then_scale.astype(np.float32), "scale")])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("If", ["cond"], ["branch"], then_branch=then, else_branch=other, name="if"),
             helper.make_node("Relu", ["branch"], ["relu"], name="relu"),
             helper.make_node("ReduceMean", ["relu"], ["y"], keepdims=0, name="mean")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                              [numpy_helper.from_array(np.array(True), "cond")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_drift_alone_passes_and_names_no_divergence():
    """One element changed inside an If body: the If output is beyond tolerance (drift: the If is judged end
    to end only), the Relu after it drifts, the mean over 16384 values passes. PASS names nothing, and says
    where the drift starts."""
    scale = np.ones((1, 4, 64, 64))
    reference = _if_model(scale)
    scale[0, 1, 5, 5] = 1.05
    report = verify(reference, _if_model(scale), per_layer=True)
    assert report.passed, report.summary()
    assert {t.name: t.verdict for t in report.tensors} == {"branch": "drift", "relu": "drift"}
    assert report.first_divergence is None
    assert any("'branch'" in note and "end to end" in note for note in report.notes)


def test_per_layer_tensors_are_shared_out_over_the_samples_outputs_are_not():
    """At most one model's worth alive: sample i compares the i-th share of the intermediate tensors."""
    model = deep_chain(8)
    folded = optimize(model, verify=False).model
    two = verify(model, folded, per_layer=True, samples=2)
    elements = {t.name: int(np.prod(t.shape)) for t in two.outputs + two.tensors}
    assert all(o.compared == 2 * elements[o.name] for o in two.outputs)
    assert len(two.tensors) > 4 and all(t.compared == elements[t.name] for t in two.tensors)
    assert any("compared on one sample each" in note for note in two.notes)
    one = verify(model, folded, per_layer=True, samples=1)
    assert {t.name for t in one.tensors} == {t.name for t in two.tensors}
    assert not any("one sample each" in note for note in one.notes)


def test_fault_is_named_whichever_sample_compares_its_tensor():
    model = deep_chain(8)
    for anchor in (bn_names(model)[0], bn_names(model)[-1]):
        report = verify(model, hand_fold_faulty(model, anchor, "scale_1pct"), per_layer=True, samples=3)
        tensor = next(n.output[0] for n in model.graph.node if n.name == anchor)
        assert not report.passed and report.first_divergence["tensor"] == tensor
