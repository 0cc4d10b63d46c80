"""Per-layer verification of float16-compute models with float32 I/O (Cast at both ends, as onnxconverter-common
writes them): correct folds pass, faults are named where they start.

onnxruntime's CPU provider has no float16 BatchNormalization: it computes it in float32 and reads its input's
float32 value where the producer also ran in float32 (MaxPool, AveragePool, Relu here), while the value it
exposes as an output is rounded to float16. Recomputed on that exposed value, an unchanged BatchNormalization
differs from the reference's own by up to one float16 step: its local tolerance must include where its input's
rounding reaches (``|scale * x| / sqrt(var + eps)``).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import bnfold
from bnfold.verification import magnitude_twins
from bnfold.verification.bound import Arithmetic, judge
from models.densenet import DenseNetConfig, build_densenet
from models.fp16 import to_float16_keep_io
from tests.builders import GraphBuilder

TINY_DENSENET = DenseNetConfig(blocks=(2, 2), growth=8, init_features=16, classes=10, image=32)


def _scaled_channel(model: onnx.ModelProto, node_name: str, channel: int, factor: float) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    node = next(n for n in out.graph.node if n.name == node_name)
    tensor = next(t for t in out.graph.initializer if t.name == node.input[1])
    weight = numpy_helper.to_array(tensor).copy()
    weight[channel] *= weight.dtype.type(factor)
    tensor.CopyFrom(numpy_helper.from_array(weight, tensor.name))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_fp16_batchnorm_after_pool_is_not_a_false_divergence(seed):
    """Regression: every dense block's first BatchNormalization (fed by a pool) was named as the first
    divergence of a correct fold (1 float16 step, 1.06-1.18x its tolerance)."""
    model = to_float16_keep_io(build_densenet(TINY_DENSENET, seed))
    folded = bnfold.optimize(model, verify=False)
    assert {a.rule for a in folded.report.applied} == {"conv_bn"} and len(folded.report.applied) == 5
    check = bnfold.verify(model, folded.model, per_layer=True)
    bn_sites = [t for t in check.tensors if t.name.endswith("norm1/BatchNormalization_output_0")]
    assert bn_sites and all(t.verdict == "pass" for t in bn_sites), [(t.name, t.local_error_vs_tolerance)
                                                                   for t in bn_sites]
    assert check.passed, check.first_divergence
    assert max(t.local_error_vs_tolerance or 0.0 for t in check.tensors) < 0.9


def _concat_bn_conv(seed: int) -> onnx.ModelProto:
    """x -> two Conv -> Relu -> Concat -> BN -> Conv1x1 (a bn_conv fold), float16 compute with float32 I/O."""
    b = GraphBuilder(seed=seed)
    x = b.input("x", [1, 4, 16, 16])
    branches = []
    for i in range(2):
        branches.append(b.node("Relu", [b.conv(x, 8, name=f"c{i}", pads=[1] * 4)], name=f"r{i}"))
    cat = b.node("Concat", branches, name="cat", axis=1)
    stats = [b.rng.uniform(0.5, 1.5, 16), b.rng.standard_normal(16) * 0.3, b.rng.standard_normal(16) * 0.3,
             b.rng.uniform(0.3, 2.0, 16)]
    b.channels[cat] = 16
    b.output(b.conv(b.bn(cat, params=[a.astype(np.float32) for a in stats], name="bn"), 12, 1, name="conv"))
    return to_float16_keep_io(b.build())


def test_fp16_bn_conv_fold_is_judged_locally_and_a_fault_in_it_is_named():
    model = _concat_bn_conv(0)
    folded = bnfold.optimize(model, verify=False)
    assert [(a.rule, a.target) for a in folded.report.applied] == [("bn_conv", "conv")]
    conv = next(n for n in folded.model.graph.node if n.name == "conv")
    correct = bnfold.verify(model, folded.model, per_layer=True)
    assert correct.passed
    site = next(t for t in correct.outputs + correct.tensors if t.name == conv.output[0])
    assert site.verdict == "pass" and "K=16" in site.tolerance  # judged on its own input, not end to end only
    broken = bnfold.verify(model, _scaled_channel(folded.model, "conv", 3, 1.01), per_layer=True)
    assert not broken.passed
    assert broken.first_divergence["tensor"] == conv.output[0]


def _conv_bn_activation(seed: int, op: str) -> onnx.ModelProto:
    """x -> Conv -> BN -> op, float16 compute with float32 I/O: onnxruntime runs BN and op in float32."""
    b = GraphBuilder(seed=seed)
    x = b.input("x", [1, 8, 16, 16])
    h = b.bn(b.conv(x, 32, name="c", pads=[1] * 4), name="bn")
    b.output(b.node(op, [h], name="act", **(dict(alpha=1 / 6, beta=0.5) if op == "HardSigmoid" else {})))
    return to_float16_keep_io(b.build())


@pytest.mark.parametrize("op", ["HardSigmoid", "Sigmoid"])
def test_fp16_activation_on_a_rounded_input_is_not_a_false_divergence(op):
    """Regression (MobileNetV3 paddle2onnx -> float16 keep-io, 14 HardSigmoids named at 1.0-1.28x): recomputed
    on the exposed float16 value of an input onnxruntime kept in float32, the result may round the other way
    (1 float16 step, up to 2 u|y|); the allowance is 2.5 u per side, so at most 0.8 of it."""
    worst = 0.0
    for seed in range(6):
        model = _conv_bn_activation(seed, op)
        check = bnfold.verify(model, bnfold.optimize(model, verify=False).model, per_layer=True)
        assert check.passed, (seed, check.summary())
        worst = max(worst, *(t.local_error_vs_tolerance or 0.0 for t in check.outputs + check.tensors))
    assert 0.0 < worst <= 0.8


def _normalised_exp(seed: int) -> onnx.ModelProto:
    """Conv -> BN -> x / sqrt(mean(x^2) + eps) -> exp(x / 2): Pow, Sqrt and Exp on float16 values that
    onnxruntime keeps in float32 between them (it has no float16 kernels for them)."""
    b = GraphBuilder(seed=seed)
    x = b.input("x", [1, 8, 16, 16])
    h = b.bn(b.conv(x, 32, name="c", pads=[1] * 4), name="bn")
    var = b.node("ReduceMean", [b.node("Pow", [h, b.init(np.array(2.0, np.float32))], name="sq")], name="var",
                 axes=[1], keepdims=1)
    std = b.node("Sqrt", [b.node("Add", [var, b.init(np.array(1e-5, np.float32))], name="eps")], name="std")
    half = b.node("Mul", [b.node("Div", [h, std], name="norm"), b.init(np.array(0.5, np.float32))], name="half")
    b.output(b.node("Exp", [half], name="exp"))
    return to_float16_keep_io(b.build())


def _worst_correct(build, seeds=range(6)) -> tuple[list[bool], float]:
    passed, worst = [], 0.0
    for seed in seeds:
        model = build(seed)
        check = bnfold.verify(model, bnfold.optimize(model, verify=False).model, per_layer=True)
        passed.append(check.passed)
        worst = max(worst, *(t.local_error_vs_tolerance or 0.0 for t in check.outputs + check.tensors))
    return passed, worst


def test_fp16_pow_sqrt_exp_carry_their_inputs_rounding(monkeypatch):
    """Regression (PP-OCRv4 rec -> float16 keep-io: Sqrt and four Pow named at 1.16-1.31x): their magnitude
    twin is k|y| (Pow: |exponent|, Exp: |x|, Sqrt: 1/2), without which a correct fold fails."""
    passed, worst = _worst_correct(_normalised_exp)
    assert all(passed) and worst <= 0.8
    monkeypatch.setattr(magnitude_twins, "RELATIVE_TWIN", set())
    passed, worst = _worst_correct(_normalised_exp, seeds=range(3))
    assert not any(passed) and worst > 1.0


def test_fp16_subnormal_results_one_step_apart_pass_and_a_fault_does_not():
    """Regression (PP-OCRv4 rec -> float16 keep-io, an SE conv's outputs of 8e-6 one step apart, 6x): below
    float16's smallest normal a rounding errs by half a step (2^-25), not by u|y|."""
    arithmetic = Arithmetic("float16", 480)
    reference = np.array([[-8e-6, 1.0]], np.float16).reshape(1, 2, 1, 1)
    step = np.array([[-8e-6 - 2.0 ** -24, 1.0]], np.float16).reshape(1, 2, 1, 1)
    assert judge(reference, step, np.full_like(reference, 2.6e-6, np.float32), None, arithmetic).passed
    fault = np.array([[-8e-6, 1.01]], np.float16).reshape(1, 2, 1, 1)
    assert not judge(reference, fault, np.full_like(reference, 1.0, np.float32), None, arithmetic).passed
