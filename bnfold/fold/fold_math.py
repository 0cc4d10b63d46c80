"""Pure float64 fold arithmetic. No ONNX types here: arrays in, arrays out.

A BatchNormalization in inference mode is the per-channel affine map

    y = scale * x + shift,   scale = gamma / sqrt(var + eps),   shift = beta - mean * scale

Every fold below composes that map with a linear layer in float64; callers round once
to the weight dtype with :func:`cast_checked`, which refuses overflow and underflow.
"""

from __future__ import annotations

import numpy as np

F64 = np.float64


def bn_scale_shift(gamma, beta, mean, var, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (scale, shift) of an inference-mode BatchNormalization, in float64."""
    gamma, beta, mean, var = (np.asarray(a, dtype=F64) for a in (gamma, beta, mean, var))
    scale = gamma / np.sqrt(var + F64(eps))
    return scale, beta - mean * scale


def _channel_view(vector: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = vector.shape[0]
    return vector.reshape(shape)


def fold_into_conv(weight, bias, scale, shift) -> tuple[np.ndarray, np.ndarray]:
    """Conv then affine: W'[o] = W[o] * s[o];  b' = b * s + t.  Weight is [C_out, C_in/g, k...]."""
    w = np.asarray(weight)
    # one pass: the float64 product is formed without first copying the weight to float64
    return np.multiply(w, _channel_view(np.asarray(scale, F64), w.ndim, 0), dtype=F64), conv_bias(bias, scale, shift)


def conv_bias(bias, scale, shift) -> np.ndarray:
    """The folded bias of conv_bn / affine_chain: b' = b * s + t (b = 0 when absent)."""
    b = np.zeros(np.shape(scale)[0], dtype=F64) if bias is None else np.asarray(bias, dtype=F64)
    return b * scale + shift


def scale_rows_rounded(weight, scale, dtype: np.dtype, *, block: int = 1 << 16) -> tuple[np.ndarray | None, np.ndarray]:
    """``fold_into_conv``'s weight, W[o] * s[o] in float64 rounded once to *dtype*, a few rows at a time.

    Each block's float64 product stays cache-sized, so big weights fold ~2.5x faster than forming the
    whole float64 product first. Returns (rounded, row_nonzero), or (None, row_nonzero) if any value is
    not finite after rounding (overflow). Bit-identical to ``fold_into_conv(...)[0].astype(dtype)``.
    """
    w = np.asarray(weight)
    rows = w.reshape(w.shape[0], -1)
    out = np.empty(rows.shape, dtype=dtype)
    s = np.asarray(scale, dtype=F64)[:, None]
    nonzero = np.empty(rows.shape[0], dtype=bool)
    finite = True
    step = max(1, block // max(1, rows.shape[1]))
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for start in range(0, rows.shape[0], step):
            chunk = out[start:start + step]
            chunk[...] = np.multiply(rows[start:start + step], s[start:start + step], dtype=F64)
            finite = finite and bool(np.isfinite(chunk).all())
            nonzero[start:start + step] = chunk.any(axis=1)
    return (out.reshape(w.shape) if finite else None), nonzero


def fold_into_conv_transpose(weight, bias, scale, shift, group: int) -> tuple[np.ndarray, np.ndarray]:
    """ConvTranspose then affine. Weight is [C_in, C_out/g, k...]; output channel o = g_idx*(C_out/g) + j."""
    w = np.asarray(weight, dtype=F64)
    c_in, c_per_group = w.shape[0], w.shape[1]
    grouped = w.reshape((group, c_in // group, c_per_group) + w.shape[2:])
    s = scale.reshape((group, 1, c_per_group) + (1,) * (w.ndim - 2))
    return (grouped * s).reshape(w.shape), conv_bias(bias, scale, shift)


def fold_into_gemm(b_matrix, c, scale, shift, *, trans_b: bool, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Gemm (Y = alpha*A*B' + beta*C) then affine on columns.

    Returns (B'', C'') for a Gemm with the same alpha and beta = 1:
    B'' scales B' column-wise; C'' = beta * C * s + t (broadcast to at least [N]).
    """
    b = np.asarray(b_matrix, dtype=F64)
    b_scaled = b * (scale[:, None] if trans_b else scale[None, :])
    if c is None:
        return b_scaled, shift.copy()
    return b_scaled, F64(beta) * np.asarray(c, dtype=F64) * scale + shift


def fold_into_matmul(weight, scale, shift, *, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMul with a constant operand whose free axis is the channel: scale that axis; shift becomes a bias."""
    w = np.asarray(weight, dtype=F64)
    return w * _channel_view(scale, w.ndim, channel_axis), shift.copy()


def fold_into_following_conv(weight, bias, scale, shift, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Affine then Conv (no padding): W'[o,i] = W[o,i] * s[c(o,i)];  b'[o] = b[o] + sum_{i,k} W[o,i,k] * t[c(o,i)].

    Weight is [C_out, C_in/g, k...]; input channel c(o, i) = (o // (C_out/g)) * (C_in/g) + i.
    """
    w = np.asarray(weight, dtype=F64)
    c_out, c_in_per_group = w.shape[0], w.shape[1]
    per_group_out = c_out // group
    s = scale.reshape(group, c_in_per_group)
    t = shift.reshape(group, c_in_per_group)
    grouped = w.reshape((group, per_group_out, c_in_per_group) + w.shape[2:])
    spatial = (1,) * (w.ndim - 2)
    w_new = grouped * s.reshape((group, 1, c_in_per_group) + spatial)
    summed = grouped.reshape(group, per_group_out, c_in_per_group, -1).sum(axis=3)  # sum over kernel
    bias_extra = np.einsum("gpi,gi->gp", summed, t).reshape(c_out)
    b = np.zeros(c_out, dtype=F64) if bias is None else np.asarray(bias, dtype=F64)
    return w_new.reshape(w.shape), b + bias_extra


def fold_into_following_gemm(b_matrix, c, scale, shift, *, trans_b: bool, alpha: float,
                             beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Affine on A's columns, then Gemm: alpha * (A s + t) B^ + beta * C = alpha * A (s B^) + C''.

    B^ is B ([K, N]) or B transposed (B is [N, K] when trans_b); row k of B^ is scaled by s[k].
    Returns (B'', C'') for a Gemm with the same alpha and beta = 1: C'' = beta * C + alpha * t B^.
    A MatMul x[M, K] @ W[K, N] is the case alpha = 1, C absent.
    """
    b = np.asarray(b_matrix, dtype=F64)
    b_hat = b.T if trans_b else b
    b_scaled = b * (scale[None, :] if trans_b else scale[:, None])
    extra = F64(alpha) * (np.asarray(shift, F64) @ b_hat)
    return b_scaled, extra if c is None else F64(beta) * np.asarray(c, dtype=F64) + extra


def affine_of_op(op: str, const, *, const_first: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of an elementwise Mul/Add/Sub/Div by a constant, in float64.

    ``const_first`` means the constant is the left operand (c - x, c * x); ``c / x`` is not affine.
    """
    c = np.asarray(const, dtype=F64)
    one, zero = np.ones_like(c), np.zeros_like(c)
    if op == "Mul":
        return c, zero
    if op == "Add":
        return one, c
    if op == "Sub":
        return (-one, c) if const_first else (one, -c)
    if op == "Div" and not const_first:
        return 1.0 / c, zero
    raise ValueError(f"{op} with the constant {'first' if const_first else 'second'} is not affine")


def cast_checked(values: np.ndarray, dtype: np.dtype, *, reference: np.ndarray | None = None,
                 scale: np.ndarray | None = None, channel_axis: int = 0,
                 group: int | None = None) -> tuple[np.ndarray | None, str | None]:
    """Round float64 *values* once to *dtype*. Returns (array, None) or (None, "overflow"|"underflow").

    Overflow: any value is not finite after rounding (a finite value that became inf, or an inf/NaN the
    float64 arithmetic already produced, e.g. division by zero). Underflow: an output channel (along
    *channel_axis*, or in the ConvTranspose layout when *group* is given; see :func:`channel_nonzero`)
    whose *reference* weights and *scale* are non-zero rounds to all zeros.
    Each check is one pass over the rounded array; the reference is read only if a channel is all zero.
    """
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        rounded = values.astype(dtype)
    if not np.isfinite(rounded).all():
        return None, "overflow"
    if reference is not None and scale is not None and rounded.ndim:
        now = channel_nonzero(rounded, channel_axis, group)
        if lost_channels(now, reference, scale, channel_axis, group):
            return None, "underflow"
    return rounded, None


def channel_nonzero(a: np.ndarray, axis: int = 0, group: int | None = None) -> np.ndarray:
    """Whether each output channel of weight *a* holds a non-zero value, without copying *a*.

    Channels lie on *axis*; with *group* (ConvTranspose), *a* is [C_in, C_out/g, k...] and output channel
    g * (C_out/g) + j is column j of group g's rows.
    """
    if group is not None:
        return a.reshape(group, a.shape[0] // group, a.shape[1], -1).any(axis=(1, 3)).reshape(-1)
    others = tuple(i for i in range(a.ndim) if i != axis)
    return np.asarray(a.any(axis=others) if others else a != 0)


def lost_channels(now: np.ndarray, reference: np.ndarray, scale: np.ndarray, axis: int = 0,
                  group: int | None = None) -> bool:
    """Whether a channel that had non-zero weights and a non-zero scale is all zero *now* (rounding wiped
    it out). The *reference* weight is read only when some channel is zero now."""
    if now.all():
        return False
    had = channel_nonzero(np.asarray(reference), axis, group) & (np.asarray(scale) != 0)
    return bool(np.any(had & ~now))
