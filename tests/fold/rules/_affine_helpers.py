"""Shared by the tests of the rules that fold Mul/Add chains (no BatchNormalization to count)."""

from __future__ import annotations

import numpy as np
import onnx

from bnfold import optimize
from tests.builders import assert_equivalent


def signed(rng: np.random.Generator, shape) -> np.ndarray:
    """Values of magnitude 0.5..2 and random sign: never zero, so every channel matters."""
    return (rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)


def assert_folds(model: onnx.ModelProto, rules: list[str], ops: list[str]):
    """optimize() applies exactly *rules*, leaves nodes *ops*, refuses nothing, and onnxruntime agrees."""
    result = optimize(model, verify=False)
    assert [a.rule for a in result.report.applied] == rules, result.report.refused
    assert [n.op_type for n in result.model.graph.node] == ops
    assert result.report.refused == ()
    assert_equivalent(model, result.model)
    return result


def assert_site_refused(model: onnx.ModelProto, node: str, reason, *, runnable: bool = True):
    """The site *node* is refused for *reason*, nothing is applied, and the graph is left as it was."""
    result = optimize(model, verify=False)
    refused = {site.node: site.reason for site in result.report.refused}
    assert refused.get(node) is reason, result.report.refused
    assert not result.report.applied
    assert result.model.graph == model.graph
    if runnable:
        assert_equivalent(model, result.model)
    return result
