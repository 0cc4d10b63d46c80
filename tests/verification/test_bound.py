"""The local tolerance rule (bnfold.verification.bound) over random Conv->BatchNormalization layers run in
onnxruntime: never below the error of a correct fold, always below the error of a 1 % single-channel fault."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper, numpy_helper

from bnfold.verification.bound import Arithmetic, judge, local_tolerance, unit_roundoff

EPS = 1e-5


def _run(nodes, inits, x: np.ndarray) -> np.ndarray:
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, list(x.shape))],
                              [helper.make_tensor_value_info("y", elem, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def _conv64(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    return np.einsum("nchwij,ocij->nohw", sliding_window_view(x, (k, k), axis=(2, 3)), w.astype(np.float64))


def _layer(seed: int, c_in: int, k: int, dtype):
    rng = np.random.default_rng(seed)
    c_out, size = 4, 6
    w = (rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2.0 / (c_in * k * k))).astype(dtype)
    x = np.maximum(rng.standard_normal((1, c_in, size, size)), 0).astype(dtype)  # post-ReLU activations
    gamma = rng.uniform(0.3, 1.5, c_out).astype(dtype)
    beta = (rng.standard_normal(c_out) * 0.3).astype(dtype)
    mean = (rng.standard_normal(c_out) * 0.5).astype(dtype)
    var = rng.uniform(0.05, 4.0, c_out).astype(dtype)
    return w, x, gamma, beta, mean, var


def _fold(w, gamma, beta, mean, var, dtype):
    s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + EPS)
    wf = (w.astype(np.float64) * s[:, None, None, None]).astype(dtype)
    bf = (beta.astype(np.float64) - s * mean.astype(np.float64)).astype(dtype)
    return wf, bf, s


def _case(seed: int, c_in: int, k: int, dtype):
    w, x, gamma, beta, mean, var = _layer(seed, c_in, k, dtype)
    pad = k // 2
    reference = _run([helper.make_node("Conv", ["x", "w"], ["v"], pads=[pad] * 4),
                      helper.make_node("BatchNormalization", ["v", "g", "b", "m", "var"], ["y"], epsilon=EPS)],
                     {"w": w, "g": gamma, "b": beta, "m": mean, "var": var}, x)
    wf, bf, s = _fold(w, gamma, beta, mean, var, dtype)
    conv = [helper.make_node("Conv", ["x", "w", "bias"], ["y"], pads=[pad] * 4)]
    folded = _run(conv, {"w": wf, "bias": bf}, x)
    faulty_w, faulty_b = wf.copy(), bf.copy()
    faulty_w[0] *= dtype(1.01)
    faulty_b[0] *= dtype(1.01)
    faulty = _run(conv, {"w": faulty_w, "bias": faulty_b}, x)
    spread = np.sqrt(_conv64(x.astype(np.float64) ** 2, wf.astype(np.float64) ** 2, pad))
    v = _conv64(x, w, pad)
    internal = (np.abs(s) * np.abs(v).max(axis=(0, 2, 3)) + np.abs(s * mean) + np.abs(beta)).reshape(1, -1, 1, 1)
    bias = np.abs(bf.astype(np.float64)).reshape(-1, 1, 1)
    return reference, folded, faulty, spread, bias, internal, Arithmetic(np.dtype(dtype).name, c_in * k * k)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), c_in=st.sampled_from([1, 3, 16, 64, 256, 512]), k=st.sampled_from([1, 3]),
       dtype=st.sampled_from([np.float32, np.float16]))
def test_tolerance_covers_a_correct_fold_and_catches_a_one_percent_fault(seed, c_in, k, dtype):
    reference, folded, faulty, spread, bias, internal, arithmetic = _case(seed, c_in, k, dtype)
    correct = judge(reference, folded, spread, bias, arithmetic, internal)
    assert correct.passed, correct
    fault = judge(reference, faulty, spread, bias, arithmetic, internal)
    assert not fault.passed, fault


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_largest_reduction_length_4608(dtype):
    reference, folded, faulty, spread, bias, internal, arithmetic = _case(7, 512, 3, dtype)
    assert arithmetic.reduction == 4608
    assert judge(reference, folded, spread, bias, arithmetic, internal).passed
    assert not judge(reference, faulty, spread, bias, arithmetic, internal).passed


def test_float16_compute_is_judged_by_float16_rounding():
    r = np.ones((1, 2, 2, 2))
    tol16 = local_tolerance(r, None, None, Arithmetic("float16"))
    tol32 = local_tolerance(r, None, None, Arithmetic("float32"))
    ratio = unit_roundoff("float16") / unit_roundoff("float32")
    assert ratio / 16 < float((tol16 / tol32).min()) < ratio  # float16 ops round once (float32 inside)


def test_nan_where_the_reference_is_finite_fails():
    r = np.ones((1, 2, 2))
    c = r.copy()
    c[0, 0, 0] = np.nan
    verdict = judge(r, c, None, None, Arithmetic("float32"))
    assert not verdict.passed and verdict.nonfinite_mismatch == 1
