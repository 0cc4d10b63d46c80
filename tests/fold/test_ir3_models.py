"""IR version 3 lists every initializer among the graph inputs (it must); onnxruntime refuses to feed them,
so they are constants: bnfold folds them and hands back a valid IR-3 model (every initializer, new ones
included, listed as an input; removed ones gone from the inputs; the real inputs' names, order and types
kept). Built with onnx.helper in the shape of old zoo models, plus the zoo graphs in onnx's own wheel."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from bnfold import inspect, optimize
from bnfold.io import load_model, save_model
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, feeds_for, op_count, run

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def ir3(b: GraphBuilder) -> onnx.ModelProto:
    """The builder's model as IR 3 writes it: every initializer also a graph input (after the real ones)."""
    for tensor in b.initializers:
        b.inputs.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return b.build(ir_version=3)


def assert_valid_ir3(original: onnx.ModelProto, folded: onnx.ModelProto) -> None:
    """IR 3 kept, checker-valid (as the original is), inputs = every initializer plus the original real inputs."""
    onnx.checker.check_model(original)
    assert folded.ir_version == 3
    onnx.checker.check_model(folded)
    inits = {t.name for t in folded.graph.initializer}
    names = [v.name for v in folded.graph.input]
    assert inits <= set(names) and len(names) == len(set(names))
    old_inits = {t.name for t in original.graph.initializer}
    real_before = [v for v in original.graph.input if v.name not in old_inits]
    real_after = [v for v in folded.graph.input if v.name not in inits]
    assert real_after == real_before  # names, order and declared types
    kept = [v.name for v in original.graph.input if v.name in inits or v.name not in old_inits]
    assert names[:len(kept)] == kept  # the surviving entries in their old order, new initializers after them


def conv_bn_ir3(opset: int = 8) -> onnx.ModelProto:
    b = GraphBuilder(opset=opset, seed=1)
    x = b.input("data", [1, 3, 8, 8])
    y = b.bn(b.conv(x, 4, name="conv"), name="bn")
    b.output(b.node("Relu", [y], name="relu"), shape=[1, 4, 6, 6])
    return ir3(b)


@pytest.mark.parametrize("opset", [7, 8])
def test_conv_bn_folds_and_stays_ir3(opset):
    model = conv_bn_ir3(opset)
    result = optimize(model)  # verified in onnxruntime, which treats the listed initializers as constants
    assert result.report.verification.status == "passed"
    assert [f.rule for f in result.report.applied] == ["conv_bn"] and result.report.refused == ()
    assert op_count(result.model, "BatchNormalization") == 0
    assert_valid_ir3(model, result.model)
    assert len(result.model.graph.input) == 1 + 2  # data, the conv's weight and bias: the BN's four are gone
    assert result.report.removed_inputs == ()  # nothing a caller could feed was removed
    assert_equivalent(model, result.model)


def test_initializer_inputs_before_the_real_input_keep_their_order():
    b = GraphBuilder(opset=8, seed=2)
    w = b.init(b.weight([4, 3, 3, 3]), "conv_w")
    b.inputs.append(helper.make_tensor_value_info("conv_w", onnx.TensorProto.FLOAT, [4, 3, 3, 3]))
    x = b.input("image", ["N", 3, 6, 6])
    b.output(b.bn(b.node("Conv", [x, w], name="conv"), 4, name="bn"), shape=["N", 4, 4, 4])
    for tensor in b.initializers[1:]:
        b.inputs.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    model = b.build(ir_version=3)
    result = optimize(model, verify=False)
    assert [v.name for v in result.model.graph.input] == ["conv_w", "image", "conv_bias"]  # bias: new, appended
    assert_valid_ir3(model, result.model)
    assert_equivalent(model, result.model)


def test_gemm_bias_whose_shape_grows_is_declared_anew():
    """Gemm with a [M, 1] bias: the folded bias is [M, N], so its input entry must say [M, N] now."""
    b = GraphBuilder(opset=8, seed=3)
    a = b.input("a", [3, 5])
    y = b.node("Gemm", [a, b.init(b.weight([5, 4]), "B"), b.init(np.full((3, 1), 0.5, np.float32), "C")],
               name="gemm")
    b.output(b.bn(y, 4, name="bn"), shape=[3, 4])
    model = ir3(b)
    result = optimize(model)
    assert [f.rule for f in result.report.applied] == ["gemm_bn"]
    assert_valid_ir3(model, result.model)
    declared = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in result.model.graph.input}
    assert declared["C"] == [3, 4] and declared["B"] == [5, 4]
    assert_equivalent(model, result.model)


def test_matmul_bn_new_bias_is_listed_as_an_input():
    b = GraphBuilder(opset=8, seed=4)
    y = b.node("MatMul", [b.input("x", ["N", 5]), b.init(b.weight([5, 4]))], name="mm")
    b.output(b.bn(y, 4, name="bn"), shape=["N", 4])
    model = ir3(b)
    result = optimize(model)
    assert [f.rule for f in result.report.applied] == ["matmul_bn"]
    assert_valid_ir3(model, result.model)
    assert "bn_bias" in {v.name for v in result.model.graph.input}
    assert_equivalent(model, result.model)


def test_weights_in_constant_nodes_still_get_their_new_initializers_listed():
    """No initializer at first (weights are Constant nodes): the bias the fold adds must be an input too."""
    b = GraphBuilder(opset=8, seed=5)
    conv = b.node("Conv", [b.input("x", [1, 3, 6, 6]), b.constant(b.weight([4, 3, 3, 3]))], name="conv")
    params = [b.constant(p) for p in b.bn_params(4)]
    b.output(b.node("BatchNormalization", [conv, *params], name="bn"), shape=[1, 4, 4, 4])
    assert not b.initializers
    model = b.build(ir_version=3)
    result = optimize(model, verify=False)
    assert [f.rule for f in result.report.applied] == ["conv_bn"]
    assert_valid_ir3(model, result.model)
    assert [v.name for v in result.model.graph.input] == ["x", "conv_bias"]
    assert_equivalent(model, result.model)


def test_nothing_to_fold_leaves_an_ir3_model_as_it_was():
    b = GraphBuilder(opset=8, seed=6)
    x, z = b.input("x", ["N", 3, 6, 6]), b.input("z", ["N", 3, 6, 6])
    b.output(b.bn(b.node("Add", [x, z]), 3, name="bn"), shape=None)
    model = ir3(b)
    result = optimize(model)
    assert [s.reason for s in result.report.refused] == [Reason.NO_FOLDABLE_NEIGHBOUR]
    assert not result.report.changed and result.model.graph == model.graph


def test_training_form_is_still_refused_in_ir3():
    b = GraphBuilder(opset=8, seed=7)
    conv = b.conv(b.input("x", [2, 3, 6, 6]), 4, name="conv")
    names = [b.init(p) for p in b.bn_params(4)]
    b.nodes.append(helper.make_node("BatchNormalization", [conv, *names], ["y", "m", "v", "sm", "sv"], name="bn"))
    b.output("y", shape=None)
    model = ir3(b)
    result = optimize(model, verify=False)
    assert [s.reason for s in result.report.refused] == [Reason.TRAINING_MODE]
    assert result.model.graph == model.graph


def test_inspect_agrees_and_a_saved_file_round_trips(tmp_path):
    model = conv_bn_ir3()
    report = inspect(model)
    assert [(s.foldable, s.rule) for s in report.batchnorms] == [(True, "conv_bn")]
    source = tmp_path / "old.onnx"
    onnx.save(model, source)
    result = optimize(source)  # from a file: loaded lazily, verified from the file
    assert result.report.verification.status == "passed"
    for external in (False, True):
        target = tmp_path / f"folded-{external}.onnx"
        save_model(result.model, target, external_data=external)
        reloaded = load_model(target)
        onnx.checker.check_model(str(target))
        assert_valid_ir3(model, reloaded)
        np.testing.assert_allclose(run(str(target), feeds_for(model))[0], run(model, feeds_for(model))[0],
                                   rtol=1e-5, atol=1e-5)


# ---- the zoo-style graphs in onnx's wheel: IR 3, opset 9, every weight listed as an input -----------------------

LIGHT_CASES = {  # model: (BatchNormalization before, after, reasons left, run both in onnxruntime)
    "light_resnet50": (53, 0, {}, False),  # (its IR-4 twin is run in tests/fold/test_constant_eval.py)
    "light_inception_v2": (69, 0, {}, True),
    "light_shufflenet": (49, 0, {}, True),
    # BN after a Concat whose inputs other layers read too (dense connectivity), or after pooling / the input
    "light_densenet121": (121, 62, {Reason.PRODUCER_HAS_OTHER_CONSUMERS: 54, Reason.BRANCH_NOT_FOLDABLE: 4,
                                    Reason.NO_FOLDABLE_NEIGHBOUR: 4}, False),
}


@pytest.mark.parametrize("name", LIGHT_CASES)
def test_zoo_graphs_from_the_onnx_wheel(name):
    path = LIGHT / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is not shipped with this onnx wheel")
    model = onnx.load(path)
    assert model.ir_version == 3
    before, after, reasons, runs = LIGHT_CASES[name]
    result = optimize(model, verify=False)
    assert (result.report.before.batchnorms, result.report.after.batchnorms) == (before, after)
    bn_refusals = Counter(s.reason for s in result.report.refused if s.op_type == "BatchNormalization")
    assert bn_refusals == Counter(reasons)
    assert_valid_ir3(model, result.model)
    again = optimize(result.model, verify=False)  # a second run finds nothing to do and changes nothing
    assert not again.report.changed and again.model.SerializeToString() == result.model.SerializeToString()
    if runs:
        assert_equivalent(model, result.model)
