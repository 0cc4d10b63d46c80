"""Every per-channel affine site left in place is reported with a reason (issue 12), by optimize and inspect,
as a BatchNormalization is; scalar constants and a MatMul's bias Add are not sites."""

from __future__ import annotations

import numpy as np

from bnfold import inspect, optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder
from tests.fold.rules._affine_helpers import signed

C = 4


def test_per_channel_mul_between_activations_is_reported():
    b = GraphBuilder(seed=0)
    r = b.node("Relu", [b.input("x", ["N", C, 5, 5])])
    b.output(b.node("Relu", [b.node("Mul", [r, b.init(signed(b.rng, [1, C, 1, 1]))], name="scale")]))
    model = b.build()
    result = optimize(model, verify=False)
    assert [(s.node, s.reason, s.rule) for s in result.report.refused] == [("scale", Reason.NO_FOLDABLE_NEIGHBOUR,
                                                                             None)]
    assert result.model.graph == model.graph
    sites = inspect(model).affine
    assert [(s.name, s.foldable, s.reason, s.producer_op) for s in sites] == [
        ("scale", False, Reason.NO_FOLDABLE_NEIGHBOUR, "Relu")]
    assert "readers Relu" in sites[0].detail


def test_keras3_bn_after_add_reports_both_nodes():
    """Add(Conv, Relu) -> Mul -> Add: add_bn names the Relu branch; the Add behind the Mul has no neighbour."""
    b = GraphBuilder(seed=1)
    x = b.input("x", ["N", C, 5, 5])
    s = b.node("Add", [b.conv(x, C), b.node("Relu", [b.conv(x, C)])])
    z = b.node("Mul", [s, b.init(signed(b.rng, [1, C, 1, 1]))], name="bn_mul")
    b.output(b.node("Relu", [b.node("Add", [z, b.init(signed(b.rng, [1, C, 1, 1]))], name="bn_add")]))
    report = inspect(b.build())
    assert {(s.name, s.reason) for s in report.affine} == {("bn_mul", Reason.BRANCH_NOT_FOLDABLE),
                                                           ("bn_add", Reason.NO_FOLDABLE_NEIGHBOUR)}
    assert report.totals.affine_refused == 2 and report.totals.affine_foldable == 0


def test_scalar_constants_and_matmul_bias_are_not_sites():
    b = GraphBuilder(seed=2)
    r = b.node("Relu", [b.input("x", ["N", C])])
    shifted = b.node("Relu", [b.node("Add", [r, b.init(np.array(3.0, np.float32))])])
    hard = b.node("Relu", [b.node("Div", [shifted, b.init(np.array([6.0], np.float32))])])
    y = b.node("Add", [b.node("MatMul", [hard, b.init(b.weight([C, 3]))]), b.init(signed(b.rng, [3]))])
    b.output(y)
    model = b.build()
    assert optimize(model, verify=False).report.refused == ()
    assert inspect(model).affine == ()
