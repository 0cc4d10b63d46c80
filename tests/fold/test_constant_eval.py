"""Weights and BN parameters computed by constant-only subgraphs (Constant, Identity, Cast, Reshape,
Squeeze/Unsqueeze, Transpose, ConstantOfShape) fold, and the chains that produced them are removed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, op_count

Source = Callable[[GraphBuilder, np.ndarray], str]
I64 = np.int64


def _axes(b: GraphBuilder, op: str, data: str, axes: list[int]) -> str:
    """Squeeze/Unsqueeze in the opset's form: attribute before 13, input from 13 on."""
    if b.opset >= 13:
        return b.node(op, [data, b.init(np.array(axes, dtype=I64))])
    return b.node(op, [data], axes=axes)


def _transposed(b: GraphBuilder, a: np.ndarray) -> str:
    perm = list(range(a.ndim))[::-1]
    return b.node("Transpose", [b.init(np.transpose(a, perm).copy())], perm=perm)


SOURCES: dict[str, Source] = {
    "initializer": lambda b, a: b.init(a),
    "constant": lambda b, a: b.constant(a),
    "identity": lambda b, a: b.node("Identity", [b.init(a)]),
    "identity-of-constant": lambda b, a: b.node("Identity", [b.node("Identity", [b.constant(a)])]),
    "cast-fp64": lambda b, a: b.node("Cast", [b.init(a.astype(np.float64))], to=TensorProto.FLOAT),
    "reshape": lambda b, a: b.node("Reshape", [b.init(a.reshape(-1)), b.init(np.array([-1, *a.shape[1:]], I64))]),
    "reshape-constant-shape": lambda b, a: b.node("Reshape", [b.constant(a.reshape(1, -1)),
                                                              b.constant(np.array(a.shape, I64))]),
    "squeeze": lambda b, a: _axes(b, "Squeeze", b.init(a[None]), [0]),
    "unsqueeze-squeeze": lambda b, a: _axes(b, "Squeeze", _axes(b, "Unsqueeze", b.init(a), [0]), [0]),
    "transpose": _transposed,
}


def _conv_bn_model(source: Source, opset: int = 17, seed: int = 0) -> tuple[onnx.ModelProto, str]:
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("x", ["N", 3, 6, 6])
    w, bias = b.weight([4, 3, 3, 3]), b.rng.standard_normal(4).astype(np.float32)
    conv = b.node("Conv", [x, source(b, w), source(b, bias)], name="conv")
    y = b.node("BatchNormalization", [conv, *(source(b, p) for p in b.bn_params(4))], name="bn")
    b.output(b.node("Relu", [y], name="relu"), shape=None)
    return b.build(), y


def _assert_folded_and_clean(model: onnx.ModelProto, y: str, constants_kept: int = 0,
                             ops: tuple[str, ...] = ("Conv", "Relu")) -> onnx.ModelProto:
    result = optimize(model, verify=False)
    out = result.model
    assert [(a.rule, a.output) for a in result.report.applied] == [("conv_bn", y)]
    assert sorted(n.op_type for n in out.graph.node) == sorted(ops + ("Constant",) * constants_kept)
    read = {name for node in out.graph.node for name in node.input}
    assert all(t.name in read for t in out.graph.initializer), "a dead initializer survived"
    assert len(out.graph.initializer) + constants_kept == 2  # exactly the folded weight and bias
    assert_equivalent(model, out)
    return out


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("name", list(SOURCES))
def test_constant_chains_fold_and_are_removed(name, opset):
    model, y = _conv_bn_model(SOURCES[name], opset=opset)
    _assert_folded_and_clean(model, y, constants_kept=2 if name == "constant" else 0)


@pytest.mark.parametrize("opset", [11, 13])
def test_unsqueeze_builds_the_kernel(opset):
    """A [4, 3, 3] tensor unsqueezed at axis 2 into a 1x3 kernel (attribute form at 11, input form at 13)."""
    b = GraphBuilder(opset=opset, seed=1)
    x = b.input("x", ["N", 3, 5, 5])
    w = _axes(b, "Unsqueeze", b.init(b.weight([4, 3, 3])), [2])
    bias = _axes(b, "Squeeze", b.init(np.ones((1, 4), np.float32)), [0])
    y = b.bn(b.node("Conv", [x, w, bias], name="conv"), 4)
    b.output(y, shape=None)
    _assert_folded_and_clean(b.build(), y, ops=("Conv",))


def test_constant_of_shape_chains_fold():
    """BN mean/var filled by ConstantOfShape from a Constant shape, then Cast from float64."""
    b = GraphBuilder(seed=2)
    x = b.input("x", ["N", 3, 6, 6])
    conv = b.conv(x, 4, name="conv")
    shape = b.constant(np.array([4], I64))
    mean = b.node("ConstantOfShape", [shape], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.25]))
    var64 = b.node("ConstantOfShape", [shape], value=helper.make_tensor("v", TensorProto.DOUBLE, [1], [0.5]))
    var = b.node("Cast", [var64], to=TensorProto.FLOAT)
    zeros = b.node("ConstantOfShape", [b.init(np.array([4], I64))])  # default fill: float32 zeros
    gamma, beta, _, _ = b.bn_params(4)
    y = b.node("BatchNormalization", [conv, b.init(gamma), b.init(beta), mean, var], name="bn")
    b.output(b.node("Add", [y, b.node("Identity", [zeros])]), shape=None)
    model = b.build()
    out = optimize(model, verify=False).model
    assert op_count(out, "BatchNormalization") == 0
    assert op_count(out, "Cast") == 0 and op_count(out, "ConstantOfShape") == 1  # zeros is still read
    assert op_count(out, "Constant") == 0
    assert_equivalent(model, out)


def test_chain_shared_by_two_folded_convs_is_removed_once_unread():
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 3, 6, 6])
    w = b.node("Identity", [b.init(b.weight([3, 3, 1, 1]))])
    first = b.bn(b.node("Conv", [x, w], name="conv_a"), 3)
    second = b.bn(b.node("Conv", [first, w], name="conv_b"), 3)
    b.output(second, shape=None)
    model = b.build()
    result = optimize(model, verify=False)
    out = result.model
    assert [n.op_type for n in out.graph.node] == ["Conv", "Conv"]
    assert len({n.input[1] for n in out.graph.node}) == 2  # each conv got its own folded weight
    assert len(out.graph.initializer) == 4
    assert_equivalent(model, out)


def test_chain_output_read_elsewhere_stays():
    b = GraphBuilder(seed=4)
    x = b.input("x", ["N", 3, 6, 6])
    bias = b.node("Identity", [b.init(np.linspace(-1, 1, 3).astype(np.float32))])
    y = b.bn(b.node("Conv", [x, b.init(b.weight([3, 3, 3, 3])), bias], name="conv"), 3)
    b.output(y, shape=None)
    b.output(bias, shape=None)
    model = b.build()
    out = optimize(model, verify=False).model
    assert op_count(out, "BatchNormalization") == 0 and op_count(out, "Identity") == 1
    assert_equivalent(model, out)


@pytest.mark.parametrize("where,reason", [("weight", Reason.WEIGHT_NOT_CONSTANT),
                                          ("param", Reason.PARAMS_NOT_CONSTANT)])
def test_chain_through_an_arithmetic_op_is_not_constant(where, reason):
    """Only bit-exact data-movement ops count as constant; an Abs is arithmetic and stops the lookup."""
    b = GraphBuilder(seed=5)
    x = b.input("x", ["N", 3, 6, 6])
    w = b.weight([4, 3, 3, 3])
    w_name = b.node("Abs", [b.init(w)]) if where == "weight" else b.init(w)
    params = [b.init(p) for p in b.bn_params(4)]
    if where == "param":
        params[3] = b.node("Abs", [params[3]])
    b.output(b.node("BatchNormalization", [b.node("Conv", [x, w_name]), *params]), shape=None)
    model = b.build()
    result = optimize(model, verify=False)
    assert result.report.applied == ()
    assert [s.reason for s in result.report.refused] == [reason]
    assert result.model.SerializeToString() == model.SerializeToString()


def test_chain_rooted_in_overridable_initializer_is_refused():
    b = GraphBuilder(seed=6)
    x = b.input("x", ["N", 3, 6, 6])
    w = b.node("Identity", [b.init(b.weight([4, 3, 3, 3]), overridable=True)])
    b.output(b.bn(b.node("Conv", [x, w]), 4), shape=None)
    result = optimize(b.build(), verify=False)
    assert [s.reason for s in result.report.refused] == [Reason.OVERRIDABLE_INITIALIZER]


# ---- an ONNX zoo graph whose weights are all ConstantOfShape outputs --------------------------------------------

LIGHT_RESNET = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"


@pytest.fixture(scope="module")
def light_resnet() -> onnx.ModelProto:
    if not LIGHT_RESNET.is_file():
        pytest.skip(f"{LIGHT_RESNET} is not shipped with this onnx wheel")
    model = onnx.load(LIGHT_RESNET)
    # The last BN output, as an extra graph output: the softmax of constant-filled weights is nearly flat.
    last_bn = [n for n in model.graph.node if n.op_type == "BatchNormalization"][-1]
    model.graph.output.append(helper.make_tensor_value_info(last_bn.output[0], TensorProto.FLOAT, [1, 2048, 7, 7]))
    return model


def test_light_resnet50_as_shipped_folds_every_bn(light_resnet):
    """IR 3 lists every initializer as a graph input because it must; onnxruntime does not let them be fed,
    so they are constants and every BN folds (the IR-3 input list is kept valid: tests/fold/test_ir3_models.py).
    Was refused as overridable_initializer before issue 12."""
    result = optimize(light_resnet, verify=False)
    assert len(result.report.applied) == 53 and result.report.refused == ()
    assert result.report.after.batchnorms == 0 and result.model.ir_version == 3


def test_light_resnet50_as_ir4_with_weights_as_inputs_is_all_overridable(light_resnet):
    """The same graph marked IR 4: initializers listed as inputs are overridable now, so nothing may fold."""
    model = onnx.ModelProto()
    model.CopyFrom(light_resnet)
    model.ir_version = 4
    result = optimize(model, verify=False)
    assert result.report.applied == ()
    reasons = Counter(s.reason for s in result.report.refused)
    assert reasons == Counter({Reason.OVERRIDABLE_INITIALIZER: 53})
    assert result.report.after == result.report.before


def test_light_resnet50_with_fixed_initializers_folds_every_bn(light_resnet):
    model = onnx.ModelProto()
    model.CopyFrom(light_resnet)
    inits = {t.name for t in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = 4
    result = optimize(model, verify=False)
    left = [(s.node, s.reason.value) for s in result.report.refused]
    assert len(result.report.applied) == 53, f"left in place: {left}"
    assert {a.rule for a in result.report.applied} == {"conv_bn"}
    assert result.report.after.batchnorms == 0
    assert op_count(result.model, "ConstantOfShape") < op_count(model, "ConstantOfShape") - 53 * 4
    onnx.checker.check_model(result.model)
    assert_equivalent(model, result.model)
