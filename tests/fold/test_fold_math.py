"""fold_math against direct float64 computations: small reference convolutions written here, random
shapes, groups and dtypes drawn by hypothesis (derandomized, so every run checks the same examples)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from bnfold.fold import fold_math

SETTINGS = settings(max_examples=60, derandomize=True, deadline=None)
DTYPES = st.sampled_from([np.float16, np.float32, np.float64])


def conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, group: int) -> np.ndarray:
    """Grouped convolution, stride 1, no padding: w is [C_out, C_in/g, k...]."""
    spatial = x.ndim - 2
    windows = sliding_window_view(x, w.shape[2:], axis=tuple(range(2, x.ndim)))  # [N, C_in, *out, *k]
    cig, cog = w.shape[1], w.shape[0] // group
    outs = []
    for g in range(group):
        xg = np.moveaxis(windows[:, g * cig:(g + 1) * cig], 1, 1 + spatial)  # [N, *out, cig, *k]
        flat = xg.reshape(xg.shape[:1 + spatial] + (-1,))
        outs.append(np.moveaxis(flat @ w[g * cog:(g + 1) * cog].reshape(cog, -1).T, -1, 1))
    y = np.concatenate(outs, axis=1)
    return y if b is None else y + b.reshape((-1,) + (1,) * spatial)


def conv_transpose_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, group: int) -> np.ndarray:
    """Grouped transposed convolution, stride 1, no padding: w is [C_in, C_out/g, k...]."""
    kernel, spatial = w.shape[2:], x.shape[2:]
    cig, cog = w.shape[0] // group, w.shape[1]
    y = np.zeros((x.shape[0], cog * group) + tuple(s + k - 1 for s, k in zip(spatial, kernel, strict=True)))
    for g, offset in itertools.product(range(group), itertools.product(*map(range, kernel))):
        rows = slice(g * cig, (g + 1) * cig)
        contribution = np.tensordot(x[:, rows], w[(rows, slice(None), *offset)], axes=([1], [0]))  # [N, *S, cog]
        window = tuple(slice(o, o + s) for o, s in zip(offset, spatial, strict=True))
        y[(slice(None), slice(g * cog, (g + 1) * cog), *window)] += np.moveaxis(contribution, -1, 1)
    return y if b is None else y + b.reshape((-1,) + (1,) * len(spatial))


def channel(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def close(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-11) -> None:
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= rel * max(np.abs(expected).max(), 1.0)


@st.composite
def conv_case(draw, transpose: bool = False):
    dims, group = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    cig, cog, batch = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    size = tuple(k + draw(st.integers(0, 3)) for k in kernel)
    rng, dtype = np.random.default_rng(draw(st.integers(0, 2**32 - 1))), draw(DTYPES)
    w_shape = (group * cig, cog) if transpose else (group * cog, cig)
    w = rng.standard_normal(w_shape + kernel).astype(dtype)
    b = rng.standard_normal(group * cog).astype(dtype) if draw(st.booleans()) else None
    x = rng.standard_normal((batch, group * cig) + size)
    return x, w, b, group, rng


def affine(rng: np.random.Generator, c: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(-2, 2, c), rng.standard_normal(c)


@SETTINGS
@given(conv_case())
def test_fold_into_conv_matches_conv_then_affine(case):
    x, w, b, group, rng = case
    scale, shift = affine(rng, w.shape[0])
    w2, b2 = fold_math.fold_into_conv(w, b, scale, shift)
    expected = channel(scale, x.ndim) * conv_ref(x, w.astype(np.float64), b, group) + channel(shift, x.ndim)
    assert w2.dtype == b2.dtype == np.float64
    close(conv_ref(x, w2, b2, group), expected)


@SETTINGS
@given(conv_case(transpose=True))
def test_fold_into_conv_transpose_matches_per_group_columns(case):
    x, w, b, group, rng = case
    scale, shift = affine(rng, w.shape[1] * group)
    w2, b2 = fold_math.fold_into_conv_transpose(w, b, scale, shift, group)
    expected = channel(scale, x.ndim) * conv_transpose_ref(x, w.astype(np.float64), b, group) + channel(shift, x.ndim)
    close(conv_transpose_ref(x, w2, b2, group), expected)


@SETTINGS
@given(conv_case())
def test_fold_into_following_conv_matches_affine_then_conv(case):
    x, w, b, group, rng = case
    scale, shift = affine(rng, x.shape[1])
    w2, b2 = fold_math.fold_into_following_conv(w, b, scale, shift, group)
    expected = conv_ref(channel(scale, x.ndim) * x + channel(shift, x.ndim), w.astype(np.float64), b, group)
    close(conv_ref(x, w2, b2, group), expected)


C_SHAPES = st.sampled_from([None, (), (1,), "n", "1n", "mn", "m1"])


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.booleans(), st.booleans(), C_SHAPES,
       st.floats(-3, 3), st.floats(-3, 3), DTYPES, st.integers(0, 2**32 - 1))
def test_fold_into_gemm_matches_gemm_then_affine(m, k, n, trans_a, trans_b, c_kind, alpha, beta, dtype, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k))
    b_mat = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c_shape = {"n": (n,), "1n": (1, n), "mn": (m, n), "m1": (m, 1)}.get(c_kind, c_kind)
    c = None if c_shape is None else rng.standard_normal(c_shape).astype(dtype)
    scale, shift = affine(rng, n)
    op_a = a.T if trans_a else a

    def op_b(matrix):
        return matrix.T if trans_b else matrix

    unfolded = alpha * op_a @ op_b(b_mat.astype(np.float64)) + (0.0 if c is None else beta * c.astype(np.float64))
    b2, c2 = fold_math.fold_into_gemm(b_mat, c, scale, shift, trans_b=trans_b, beta=beta)
    assert b2.shape == b_mat.shape
    close(alpha * op_a @ op_b(b2) + c2, scale * unfolded + shift)  # the folded Gemm runs with beta = 1


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.booleans(), DTYPES, st.integers(0, 2**32 - 1))
def test_fold_into_matmul_on_either_side(n, k, c, weight_first, dtype, seed):
    rng = np.random.default_rng(seed)
    scale, shift = affine(rng, c)
    if weight_first:  # W[C, K] @ x[N, K, L] -> [N, C, L]
        w, x = rng.standard_normal((c, k)).astype(dtype), rng.standard_normal((n, k, 3))
        w2, bias = fold_math.fold_into_matmul(w, scale, shift, channel_axis=0)
        close(w2 @ x + bias[:, None], scale[:, None] * (w.astype(np.float64) @ x) + shift[:, None])
    else:  # x[N, K] @ W[K, C] -> [N, C]
        w, x = rng.standard_normal((k, c)).astype(dtype), rng.standard_normal((n, k))
        w2, bias = fold_math.fold_into_matmul(w, scale, shift, channel_axis=1)
        close(x @ w2 + bias, scale * (x @ w.astype(np.float64)) + shift)


@SETTINGS
@given(st.integers(1, 6), st.floats(1e-8, 1e-1), DTYPES, st.integers(0, 2**32 - 1))
def test_bn_scale_shift_is_the_bn_formula(c, eps, dtype, seed):
    rng = np.random.default_rng(seed)
    gamma, beta, mean = (rng.standard_normal(c).astype(dtype) for _ in range(3))
    var = rng.uniform(0, 5, c).astype(dtype)
    x = rng.standard_normal((4, c))
    scale, shift = fold_math.bn_scale_shift(gamma, beta, mean, var, eps)
    g64, b64, m64, v64 = (p.astype(np.float64) for p in (gamma, beta, mean, var))
    close(scale * x + shift, g64 * (x - m64) / np.sqrt(v64 + eps) + b64, rel=1e-12)


@SETTINGS
@given(st.sampled_from(["Mul", "Add", "Sub", "Div"]), st.booleans(), st.sampled_from([(), (1,), (3,), (2, 3)]),
       st.integers(0, 2**32 - 1))
def test_affine_of_op_matches_the_op(op, const_first, const_shape, seed):
    rng = np.random.default_rng(seed)
    const = rng.uniform(0.5, 2, const_shape) * rng.choice([-1, 1], const_shape)
    x = rng.standard_normal((2, 3))
    if op == "Div" and const_first:
        with pytest.raises(ValueError, match="not affine"):
            fold_math.affine_of_op(op, const, const_first=True)
        return
    ops = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}
    expected = ops[op](const, x) if const_first else ops[op](x, const)
    scale, shift = fold_math.affine_of_op(op, const, const_first=const_first)
    close(scale * x + shift, expected, rel=1e-15)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_cast_checked_passes_normal_values_rounded_once(dtype):
    values = np.random.default_rng(0).standard_normal((4, 3)) * 100
    out, problem = fold_math.cast_checked(values, np.dtype(dtype), reference=values, scale=np.ones(4))
    assert problem is None and out.dtype == dtype
    np.testing.assert_array_equal(out, values.astype(dtype))


@pytest.mark.parametrize(("dtype", "big"), [(np.float16, 65520.0), (np.float32, 3.5e38)])
def test_cast_checked_detects_overflow(dtype, big):
    values = np.array([[1.0, -big], [2.0, 3.0]])
    assert fold_math.cast_checked(values, np.dtype(dtype)) == (None, "overflow")
    assert fold_math.cast_checked(values * 0.5, np.dtype(dtype))[1] is None  # half of it still fits


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_cast_checked_refuses_values_already_non_finite(bad):
    """Division by a zero constant or var + eps == 0 gives inf/NaN in float64: never written out."""
    out, problem = fold_math.cast_checked(np.array([bad, 1.0]), np.dtype(np.float16))
    assert out is None and problem == "overflow"


@pytest.mark.parametrize("axis", [0, 1])
def test_cast_checked_detects_a_channel_that_underflows(axis):
    reference = np.ones((3, 4)) if axis == 0 else np.ones((4, 3))
    scale = np.array([1.0, 1e-9, 1.0])
    values = reference * (scale[:, None] if axis == 0 else scale[None, :])
    found = fold_math.cast_checked(values, np.dtype(np.float16), reference=reference, scale=scale, channel_axis=axis)
    assert found == (None, "underflow")
    scale[1] = 0.0  # a zero scale legitimately zeroes the channel
    zeroed = reference * (scale[:, None] if axis == 0 else scale[None, :])
    out, problem = fold_math.cast_checked(zeroed, np.dtype(np.float16), reference=reference, scale=scale,
                                          channel_axis=axis)
    assert problem is None and not out.any(axis=1 - axis)[1]


def test_cast_checked_ignores_channels_that_were_already_zero():
    reference, scale = np.array([[0.0, 0.0], [1.0, 2.0]]), np.array([1e-9, 1.0])
    out, problem = fold_math.cast_checked(reference * scale[:, None], np.dtype(np.float16), reference=reference,
                                          scale=scale, channel_axis=0)
    assert problem is None and not out[0].any()


def ulps_from(values: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Error of float32 *values* in units of the float32 spacing at the truth."""
    return (np.abs(values.astype(np.longdouble) - truth) / np.spacing(np.abs(truth).astype(np.float32))).astype(float)


def test_float64_fold_rounded_once_beats_folding_in_float32():
    """Against a long-double truth, rounding the float64 fold once is within half an ulp everywhere and,
    over many examples, more accurate than the usual float32 fold (several roundings in the scale)."""
    rng = np.random.default_rng(1234)
    once, in_f32 = [], []
    for _ in range(200):
        c = int(rng.integers(1, 8))
        w = rng.standard_normal((c, 3, 3)).astype(np.float32)
        b, gamma, beta, mean = (rng.standard_normal(c).astype(np.float32) for _ in range(4))
        var, eps = rng.uniform(1e-3, 10, c).astype(np.float32), np.float32(1e-5)
        ld = [p.astype(np.longdouble) for p in (w, b, gamma, beta, mean, var)]
        s_true = ld[2] / np.sqrt(ld[5] + np.longdouble(eps))
        truth = np.concatenate([(ld[0] * s_true[:, None, None]).ravel(), ld[1] * s_true + ld[3] - ld[4] * s_true])
        s64, t64 = fold_math.bn_scale_shift(gamma, beta, mean, var, float(eps))
        w64, b64 = fold_math.fold_into_conv(w, b, s64, t64)
        once.append(ulps_from(np.concatenate([w64.ravel(), b64]).astype(np.float32), truth))
        s32 = gamma / np.sqrt(var + eps)
        in_f32.append(ulps_from(np.concatenate([(w * s32[:, None, None]).ravel(), b * s32 + (beta - mean * s32)]),
                                truth))
    once_all, f32_all = np.concatenate(once), np.concatenate(in_f32)
    assert once_all.max() <= 0.5 + 1e-3
    assert once_all.mean() < f32_all.mean()
    assert (once_all <= f32_all + 1e-3).mean() > 0.99


@settings(max_examples=60, deadline=None, derandomize=True)
@given(c_out=st.integers(1, 9), rest=st.integers(1, 40), block=st.integers(1, 64),
       dtype=st.sampled_from([np.float16, np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_blockwise_fold_is_bit_identical_to_the_whole_array_fold(c_out, rest, block, dtype, seed):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((c_out, rest)).astype(dtype)
    scale = rng.standard_normal(c_out) * 10.0 ** rng.integers(-3, 3, c_out)
    scale[rng.random(c_out) < 0.2] = 0.0
    expected = fold_math.fold_into_conv(weight, None, scale, scale)[0].astype(dtype)
    rounded, nonzero = fold_math.scale_rows_rounded(weight, scale, np.dtype(dtype), block=block)
    assert rounded is not None and rounded.dtype == dtype
    assert np.array_equal(rounded, expected)
    assert np.array_equal(nonzero, expected.any(axis=1))


def test_blockwise_fold_reports_overflow():
    weight = np.full((2, 3), 60000.0, dtype=np.float16)
    rounded, _ = fold_math.scale_rows_rounded(weight, np.array([1.0, 2.0]), np.dtype(np.float16))
    assert rounded is None


@settings(max_examples=60, deadline=None)
@given(group=st.sampled_from([1, 2, 4]), per_group=st.integers(1, 3), c_in_per_group=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_channel_nonzero_follows_conv_transpose_output_channels(group, per_group, c_in_per_group, seed):
    """Output channel g * (C_out/g) + j of a ConvTranspose weight [C_in, C_out/g, k, k] is column j of group
    g's rows: spelled out channel by channel here, against the copy-free reshape."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((group * c_in_per_group, per_group, 2, 2)) * (rng.random((group * c_in_per_group,
                                                                                        per_group, 1, 1)) < 0.5)
    expected = [bool(w[g * c_in_per_group:(g + 1) * c_in_per_group, j].any())
                for g in range(group) for j in range(per_group)]
    assert fold_math.channel_nonzero(w, group=group).tolist() == expected


def test_channel_nonzero_on_any_axis_and_lost_channels():
    w = np.array([[0.0, 1.0, 0.0], [0.0, 2.0, 3.0]])
    assert fold_math.channel_nonzero(w, 1).tolist() == [False, True, True]
    assert fold_math.channel_nonzero(w, 0).tolist() == [True, True]
    now = np.array([False, True, True])
    assert not fold_math.lost_channels(now, w, np.ones(3), 1)  # channel 0 had nothing to lose
    assert fold_math.lost_channels(np.array([True, False, True]), w, np.ones(3), 1)
    assert not fold_math.lost_channels(np.array([True, False, True]), w, np.array([1.0, 0.0, 1.0]), 1)
