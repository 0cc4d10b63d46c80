"""detach / lend / attach: large weights lent to onnxruntime as arrays compute what the whole model does."""

from __future__ import annotations

import gc

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bnfold.errors import ModelLoadError
from bnfold.run import lending as detached
from bnfold.run.lending import LEND_MIN_BYTES, attach, detach
from bnfold.run.sessions import create_session
from tests.builders import GraphBuilder

FEED = {"x": np.random.default_rng(1).standard_normal((2, 8, 6, 6)).astype(np.float32)}


def conv_bn_reshape() -> onnx.ModelProto:
    """A 16x8x3x3 weight (4.6 KiB: lent), BN vectors and an int64 shape (small: inline)."""
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 8, 6, 6])
    hidden = b.bn(b.conv(x, 16, name="conv"), name="bn")
    shape = b.init(np.array([0, -1], dtype=np.int64), name="flat_shape")
    b.output(b.node("Reshape", [hidden, shape], name="flatten"))
    return b.build()


@pytest.fixture
def model() -> onnx.ModelProto:
    return conv_bn_reshape()


def _whole_session_output(model: onnx.ModelProto) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, FEED)[0]


def test_detach_lends_large_floats_and_keeps_small_and_integer_tensors_inline(model):
    split = detach(model)
    assert split is not None
    sizes = {i.name: numpy_helper.to_array(i).nbytes for i in model.graph.initializer}
    lent = {name for name, size in sizes.items() if size >= LEND_MIN_BYTES}
    assert set(split.arrays) == lent and len(lent) == 1  # only the conv weight is that large here
    for init in split.structure.graph.initializer:
        if init.name in lent:
            assert init.data_location == onnx.TensorProto.EXTERNAL and not init.raw_data
            assert np.array_equal(split.arrays[init.name], numpy_helper.to_array(
                next(i for i in model.graph.initializer if i.name == init.name)))
        else:
            assert init.data_location == onnx.TensorProto.DEFAULT and init.HasField("raw_data")
    assert split.structure.ByteSize() < model.ByteSize() - 4000


def test_arrays_are_copies_later_edits_of_the_model_do_not_reach_them(model):
    split = detach(model)
    name = next(iter(split.arrays))
    before = split.arrays[name].copy()
    weight = next(i for i in model.graph.initializer if i.name == name)
    weight.raw_data = np.zeros_like(before).tobytes()
    assert np.array_equal(split.arrays[name], before)


def test_lent_session_computes_what_the_whole_model_computes(model):
    expected = _whole_session_output(model)
    session = create_session(detach(model), extra_outputs=["bn_out"])
    assert len(session._bnfold_lent_values) == 1  # the weight really was lent, not serialised
    got, bn_out = session.run(["flatten_out", "bn_out"], FEED)
    assert np.array_equal(got, expected) and bn_out.shape == (2, 16, 4, 4)


def test_a_proto_is_lent_automatically_and_left_untouched(model):
    before = model.SerializeToString()
    session = create_session(model, extra_outputs=["conv_out"])
    assert len(session._bnfold_lent_values) == 1
    assert np.array_equal(session.run(["flatten_out"], FEED)[0], _whole_session_output(model))
    assert model.SerializeToString() == before


def test_lent_buffers_outlive_everything_but_the_session(model):
    expected = _whole_session_output(model)
    session = create_session(detach(model))  # the DetachedModel itself is dropped at once
    gc.collect()
    garbage = [np.full(4096, 7.0, dtype=np.float32) for _ in range(64)]  # reuse any freed memory
    assert np.array_equal(session.run(None, FEED)[0], expected)
    del garbage


def test_when_onnxruntime_refuses_the_loan_the_whole_model_is_used(model, monkeypatch):
    monkeypatch.setattr(detached, "PLACEHOLDER", "elsewhere.bin")  # stubs now name a file that never exists
    split = detach(model)
    monkeypatch.setattr(detached, "PLACEHOLDER", "bnfold-lent-weights.bin")
    session = create_session(split, extra_outputs=["bn_out"])
    assert not hasattr(session, "_bnfold_lent_values")
    assert np.array_equal(session.run(["flatten_out"], FEED)[0], _whole_session_output(model))


def test_a_broken_model_still_reports_onnxruntimes_own_error(model):
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(ModelLoadError, match="NoSuchOp"):
        create_session(model)


def test_attach_restores_every_initializer(model):
    whole = attach(detach(model))
    original = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    restored = {i.name: numpy_helper.to_array(i) for i in whole.graph.initializer}
    assert original.keys() == restored.keys()
    assert all(np.array_equal(original[n], restored[n]) for n in original)
    assert whole.graph.node == model.graph.node and whole.graph.output == model.graph.output


def test_models_with_external_data_are_not_detached(model, tmp_path):
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    lazy = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    assert detach(lazy) is None


def test_an_overridable_weight_can_still_be_fed(model):
    b = GraphBuilder(seed=4)
    x = b.input("x", ["N", 8, 6, 6])
    scale = b.init(np.full((1, 8, 6, 6), 2.0, dtype=np.float32), name="scale", overridable=True)  # 1.1 KiB: lent
    b.output(b.node("Mul", [x, scale], name="mul"))
    session = create_session(b.build())
    assert len(session._bnfold_lent_values) == 1
    assert np.array_equal(session.run(None, FEED)[0], FEED["x"] * 2)
    fed = {**FEED, "scale": np.full((1, 8, 6, 6), 3.0, dtype=np.float32)}
    assert np.array_equal(session.run(None, fed)[0], FEED["x"] * 3)


def test_a_subgraph_reads_a_lent_weight_of_the_main_graph():
    from onnx import helper

    b = GraphBuilder(seed=5)
    x = b.input("x", ["N", 8, 6, 6])
    weight = b.init(np.random.default_rng(5).standard_normal((1, 8, 6, 6)).astype(np.float32), name="w")
    flag = b.init(np.array(True), name="flag")
    then = helper.make_graph([helper.make_node("Mul", [x, weight], ["then_out"])], "then", [],
                             [helper.make_tensor_value_info("then_out", onnx.TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Add", [x, weight], ["else_out"])], "else", [],
                              [helper.make_tensor_value_info("else_out", onnx.TensorProto.FLOAT, None)])
    b.nodes.append(helper.make_node("If", [flag], ["y"], then_branch=then, else_branch=other))
    b.output("y")
    model = b.build()
    session = create_session(model)
    assert len(session._bnfold_lent_values) == 1
    assert np.array_equal(session.run(None, FEED)[0], FEED["x"] * numpy_helper.to_array(model.graph.initializer[0]))


def test_the_fold_path_does_not_import_onnxruntime():
    """optimize imports this module; onnxruntime (~0.1 s to import) is only for verification."""
    import subprocess
    import sys

    code = "import sys, bnfold.optimizer, bnfold.cli.optimize_file; print('onnxruntime' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("level", ["disable", "basic", "extended", "all"])
def test_weights_are_lent_at_every_optimization_level(model, level, capfd):
    """Regression (issue 13): with optimizations on, lending failed (printing an ``[E:onnxruntime...]``
    line despite the log level) and the whole model was serialised."""
    session = create_session(detach(model), opt_level=level)
    assert len(session._bnfold_lent_values) == 1
    assert "onnxruntime" not in capfd.readouterr().err
    np.testing.assert_allclose(session.run(["flatten_out"], FEED)[0], _whole_session_output(model),
                               rtol=1e-5, atol=1e-5)  # optimized kernels may round differently


def test_the_lent_attempt_logs_nothing_a_retry_would_report(model, tmp_path):
    """A refused loan is retried with the whole model (whose own error is reported): onnxruntime must not
    print the first refusal (issue 13: an ``[E:onnxruntime...]`` line despite the log level)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    detached.lend(detach(model), str(tmp_path), options)
    assert options.log_severity_level == detached.FATAL_ONLY
