"""The mutant generators used to test verification: each changes exactly what it says, and nothing else."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import models
from bnfold import optimize
from bnfold.fold import driver
from tests.verification import mutants as M


@pytest.fixture(scope="module")
def folded_resnet():
    result = optimize(models.build("resnet18"), verify=False)
    return result.model, result.report.applied


def _arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _changed(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Initializers whose values differ, asserting that the graph itself (nodes, I/O, names) is identical."""
    assert [n.SerializeToString() for n in before.graph.node] == [n.SerializeToString() for n in after.graph.node]
    assert before.graph.input == after.graph.input and before.graph.output == after.graph.output
    old, new = _arrays(before), _arrays(after)
    assert old.keys() == new.keys()
    for name in old:
        assert old[name].dtype == new[name].dtype and old[name].shape == new[name].shape, name
    return {n: (old[n], new[n]) for n in old if not np.array_equal(old[n], new[n])}


def _conv(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def test_depths_pick_first_middle_and_last_folded_conv_in_graph_order(folded_resnet) -> None:
    model, applied = folded_resnet
    convs = M.folded_convs(model, applied)
    assert len(convs) == 20 and all(c.op_type == "Conv" for c in convs)
    names = [c.name for c in model.graph.node if c.op_type == "Conv"]
    assert [c.name for c in convs] == [n for n in names if n in {c.name for c in convs}]
    picked = [M.pick(convs, d).name for d in M.DEPTHS]
    assert picked == [convs[0].name, convs[10].name, convs[-1].name]
    with pytest.raises(ValueError, match="depth"):
        M.pick(convs, "bottom")


@pytest.mark.parametrize("depth", M.DEPTHS)
def test_scale_changes_one_output_channel_of_weight_and_bias(folded_resnet, depth: str) -> None:
    model, applied = folded_resnet
    mutant = M.mutate(model, applied, "scale", depth)
    conv = _conv(model, mutant.node)
    assert mutant.output == conv.output[0] and mutant.tensors == (conv.input[1], conv.input[2])
    changed = _changed(model, mutant.model)
    assert set(changed) == set(mutant.tensors)
    (channel,) = mutant.channels
    (w_old, w_new), (b_old, b_new) = changed[conv.input[1]], changed[conv.input[2]]
    rows = np.flatnonzero((w_old != w_new).reshape(w_old.shape[0], -1).any(axis=1))
    assert rows.tolist() == [channel]
    np.testing.assert_allclose(w_new[channel], w_old[channel] * 1.01, rtol=2e-7)
    assert np.flatnonzero(b_old != b_new).tolist() == [channel]
    assert b_new[channel] == pytest.approx(b_old[channel] * 1.01, rel=2e-7)


def test_shift_moves_one_bias_channel_by_five_percent_of_the_spread(folded_resnet) -> None:
    model, applied = folded_resnet
    mutant = M.mutate(model, applied, "shift", "middle")
    changed = _changed(model, mutant.model)
    assert list(changed) == list(mutant.tensors) == [_conv(model, mutant.node).input[2]]
    old, new = changed[mutant.tensors[0]]
    (channel,) = mutant.channels
    assert np.flatnonzero(old != new).tolist() == [channel]
    spread = float(old.max()) - float(old.min())
    assert float(new[channel]) - float(old[channel]) == pytest.approx(0.05 * spread, rel=1e-5)


def test_swap_exchanges_the_smallest_and_largest_bias(folded_resnet) -> None:
    model, applied = folded_resnet
    mutant = M.mutate(model, applied, "swap", "deepest")
    (old, new), = _changed(model, mutant.model).values()
    lo, hi = mutant.channels
    assert (lo, hi) == (int(np.argmin(old)), int(np.argmax(old)))
    assert np.flatnonzero(old != new).tolist() == sorted((lo, hi))
    assert (new[lo], new[hi]) == (old[hi], old[lo])


def test_fp16_rounds_weight_and_bias_through_float16_only(folded_resnet) -> None:
    model, applied = folded_resnet
    mutant = M.mutate(model, applied, "fp16", "first")
    changed = _changed(model, mutant.model)
    assert set(changed) == set(mutant.tensors) == set(_conv(model, mutant.node).input[1:3])
    for old, new in changed.values():
        np.testing.assert_array_equal(new, old.astype(np.float16).astype(np.float32))
        assert np.all(np.abs(new - old) <= np.abs(old) * 2.0**-11 + 2.0**-25)


def test_grouped_conv_transpose_scales_the_right_weight_slice() -> None:
    result = optimize(models.build("unet2d"), verify=False)
    model = result.model
    grouped = next(n for n in model.graph.node if n.op_type == "ConvTranspose"
                   and any(a.name == "group" and a.i == 2 for a in n.attribute))
    assert grouped in M.folded_convs(model, result.report.applied)
    before = {k: v.copy() for k, v in _arrays(model).items()}
    tensors, (channel,), _ = M.apply_in_place(model, grouped, "scale")
    weight_old, weight_new = before[tensors[0]], _arrays(model)[tensors[0]]
    per_in, per_out = weight_old.shape[0] // 2, weight_old.shape[1]
    group, local = divmod(channel, per_out)
    expected = weight_old.copy()
    expected[group * per_in:(group + 1) * per_in, local] *= np.float32(1.01)
    np.testing.assert_array_equal(weight_new, expected)


def test_refusals_say_why(folded_resnet) -> None:
    half = optimize(models.build("resnet18_fp16"), verify=False)
    with pytest.raises(M.NotApplicable, match="already float16"):
        M.mutate(half.model, half.report.applied, "fp16", "first")
    model, applied = folded_resnet
    with pytest.raises(ValueError, match="kind"):
        M.mutate(model, applied, "flip", "first")
    with pytest.raises(M.NotApplicable, match="no folded conv"):
        M.mutate(model, (), "scale", "first")
    shared = onnx.ModelProto()
    shared.CopyFrom(model)
    convs = M.folded_convs(shared, applied)
    convs[1].input[2] = convs[0].input[2]
    with pytest.raises(M.NotApplicable, match="read by 2 nodes"):
        M.apply_in_place(shared, convs[0], "shift")


def test_injected_mutant_equals_the_standalone_one_and_is_undone_after(folded_resnet) -> None:
    model, applied = folded_resnet
    standalone = M.mutate(model, applied, "shift", "middle")
    original = driver.fold_model
    with M.injected("shift", standalone.node) as made:
        inside = optimize(models.build("resnet18"), verify=False).model
    assert len(made) == 1 and driver.fold_model is original
    assert _arrays(inside).keys() == _arrays(standalone.model).keys()
    for name, value in _arrays(standalone.model).items():
        np.testing.assert_array_equal(_arrays(inside)[name], value, err_msg=name)
    clean = optimize(models.build("resnet18"), verify=False).model
    assert set(_changed(clean, inside)) == set(standalone.tensors)


def test_injection_skips_a_conv_where_the_mutant_cannot_go() -> None:
    half = models.build("resnet18_fp16")
    target = M.folded_convs(*(lambda r: (r.model, r.report.applied))(optimize(half, verify=False)))[0].name
    with M.injected("fp16", target) as made:
        result = optimize(half, verify=False)
    assert made == [] and result.report.applied
