"""How far a correct computation of one layer may be from another correct computation of it: the local
tolerance, from the layer's own arithmetic. Pure numpy; no onnxruntime here.

Two evaluations of one linear layer ``y = W * x + b`` (Conv, ConvTranspose, Gemm, MatMul) on the SAME input
differ only by rounding: of the weights (a fold rounds ``W * s`` once, the original rounds ``W`` and then
``s * (W x)``), of the accumulation over the reduction length ``K`` (C_in/group x kernel size), and of the
result and the few element-wise operations around it (BatchNormalization's ``(v - mean) * s + beta``).
Rounding errors of independent terms add like a random walk (Higham and Mary's probabilistic bound), so
with ``spread = sqrt(sum_k w_k^2 x_k^2)`` (the twin layer on squared weights and inputs) the tolerance is,
per element::

    tol = u_c * (A * (max|y| + max|b| + internal) of the channel + B * spread)
          + 4 * u_acc * (6 + sqrt(K)) * (spread + |y| + |b|)

``u_c`` is the unit roundoff of the compute dtype (float16 compute behind float32 inputs/outputs is float16),
``u_acc`` that of the accumulator: onnxruntime accumulates float16 convolutions and GEMMs in float32 (measured:
the error of a float16 Conv with K = 4608 is one float16 rounding of its output). ``internal`` is what the
reference's own intermediate values reach at this output (its conv output before BatchNormalization scales
it, ``|s * mean| + |beta|``, a bias the sum cancels: :mod:`bnfold.verification.ref_path`). ``A`` and ``B``
(constants below) cover the roundings of the results and of the weights/inputs: onnxruntime computes each
float16 op in float32 and rounds its result once, so 1.5 and 3 there; in float32 every internal step of an op
rounds, so 16 and 8. The last term is the accumulation of both evaluations (measured in float32 against
float64: 3.3, 12.8 and 14.4 units of ``u * spread`` for K = 4, 576, 4608). Each addition rounds the partial
sum, so the accumulation's error follows the partial sums: terms of mixed sign keep them near ``spread``,
like-signed terms (positive weights on post-ReLU inputs) make them grow steadily to the sum itself,
``|y - b| <= |y| + |b|`` (the reference's ``W x`` scaled by ``s`` is the same sum), hence ``|y| + |b|`` beside
``spread``. Measured on onnx's zoo-style light models (every weight 0.02, activations equal across channels):
a float32 1x1 Conv with K = 256 errs by 30 units of ``u * |y|`` per evaluation, 54-86 for both evaluations at
K = 128 ... 2048, where ``spread`` is ``|y - b| / sqrt(K)``. For a float32 Conv with group 1 the local check
bounds ``spread`` by ``max|w| * sqrt(window sum of x^2)`` (cheaper, 2-4x looser).

Calibration (``tests/verification/test_bound.py``, 144 random Conv->BN layers per dtype, K = 1 ... 4608,
post-ReLU inputs, running statistics like trained ones, exact spread): a correct fold reaches at most 0.43 of
this tolerance in float16 and 0.10 in float32; a 1 % fault in one channel (weights and bias) at least 2.2x
it in float16 and 220x in float32. On the light models' 151 checked folds (ResNet-50, Inception-v2,
ShuffleNet) a correct fold reaches at most 0.66 (``tests/verification/test_like_signed_sums.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Roundings of the results and of the element-wise steps around the layer (A), and of the weights and fed
# inputs in units of spread (B). Where the accumulator is wider than the compute dtype (float16 on onnxruntime
# computes each op in float32 and rounds its result once), each side rounds about once per exposed value;
# in float32 every internal step of an op rounds (BatchNormalization's 3, Mul/Add chains), so more.
A_RESULT = {"narrow": 1.5, "same": 16.0}
B_WEIGHTS = {"narrow": 3.0, "same": 8.0}
# An element-wise node whose fed input is a rounded copy (float16 exposed where onnxruntime kept float32, the
# sites with a magnitude twin): each side rounds its own result, up to u*|y| apart each way, so 2 units of
# u*|y| at least (1.5 fell short where a channel has few elements: MobileNetV3's HardSigmoid, 1.28x).
A_ROUNDED_INPUT = 2.5
ACC_FACTOR, ACC_BASE = 4.0, 6.0  # accumulation: both evaluations round, independently
ACCUMULATOR = {"float16": "float32", "bfloat16": "float32"}  # what onnxruntime accumulates in


def unit_roundoff(dtype: str | np.dtype) -> float:
    """Half the distance from 1 to the next float of *dtype* (2^-24 for float32, 2^-11 for float16)."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name == "bfloat16":
        return 2.0 ** -8
    return float(np.finfo(np.dtype(name)).eps) / 2


def smallest_step(dtype: str | np.dtype) -> float:
    """The spacing of *dtype*'s subnormals (2^-24 for float16, 2^-149 for float32): below its smallest normal
    a rounding errs by up to half of it, whatever the value, not by u*|value|."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name == "bfloat16":
        return 2.0 ** -133
    return float(np.finfo(np.dtype(name)).smallest_subnormal)


@dataclass(frozen=True)
class Arithmetic:
    """How one layer computes: the dtype of its values, its accumulator, its reduction length."""

    compute: str  # "float32", "float16", ...
    reduction: int = 1  # K = C_in/group x kernel size (1: element-wise)

    @property
    def accumulate(self) -> str:
        return ACCUMULATOR.get(self.compute, self.compute)

    def describe(self) -> str:
        return f"{self.compute} compute, K={self.reduction}"


def channel_max(a: np.ndarray) -> np.ndarray:
    """max over every axis but 1, kept broadcastable against *a* (the whole tensor below rank 2)."""
    if a.ndim < 2 or a.size == 0:
        return np.asarray(a.max() if a.size else 0.0, dtype=np.float64)
    axes = (0, *range(2, a.ndim))
    return a.max(axis=axes, keepdims=True).astype(np.float64)


def local_tolerance(reference: np.ndarray, spread: np.ndarray | None, bias: np.ndarray | None,
                    arithmetic: Arithmetic, internal: np.ndarray | float | None = None,
                    inputs: np.ndarray | None = None) -> np.ndarray:
    """The per-element tolerance above (*reference*'s shape; float32 for float32/float16 tensors, whose
    tolerances float32 holds amply, else float64). *reference* must be finite. *spread*:
    ``sqrt(sum w^2 x^2)`` per element (None: an element-wise layer); *bias*: the layer's bias, broadcastable
    per channel; *internal*: the magnitude the reference's own intermediate values reach at this output, per
    channel (:mod:`bnfold.verification.ref_path`), added to the level like max|y|; *inputs*: per element,
    what the rounding of an element-wise node's inputs can reach at its output (the node on |inputs|)."""
    work = _work_dtype(reference)
    magnitude = np.asarray(np.abs(np.asarray(reference, dtype=work)))  # an array even for a 0-d tensor
    return _tolerance(magnitude, spread, bias, arithmetic, internal, inputs)


def _tolerance(magnitude: np.ndarray, spread: np.ndarray | None, bias: np.ndarray | None, arithmetic: Arithmetic,
               internal: np.ndarray | float | None, inputs: np.ndarray | None) -> np.ndarray:
    """:func:`local_tolerance` from ``|reference|`` (in its work dtype), whose buffer becomes the result:
    two passes over the tensor's size for a linear layer's terms, one for the per-channel ones."""
    work = magnitude.dtype.type
    u_c, u_acc = unit_roundoff(arithmetic.compute), unit_roundoff(arithmetic.accumulate)
    regime = "narrow" if u_acc < u_c else "same"
    a, b = A_RESULT[regime], B_WEIGHTS[regime]
    if inputs is not None:
        a = max(a, A_ROUNDED_INPUT)
    level = channel_max(magnitude)
    if bias is not None:
        level = level + _bias_level(bias, magnitude.shape)
    if internal is not None:
        level = level + np.asarray(internal, dtype=np.float64)
    # each rounding of a subnormal result or weight errs absolutely (up to half a step): an SE block's float16
    # conv outputs of 8e-6 differed by one step, 6x the relative terms (PP-OCRv4 rec, onnxconverter-common)
    per_channel = u_c * a * level + (a + b) * smallest_step(arithmetic.compute)
    tol = magnitude
    if spread is not None:
        accumulate = ACC_FACTOR * u_acc * (ACC_BASE + math.sqrt(arithmetic.reduction))
        tol *= work(accumulate)  # the partial sums' drift: a sum of like-signed terms reaches |y - bias|
        tol += np.multiply(spread, work(u_c * b + accumulate), dtype=work)
        if bias is not None:
            per_channel = per_channel + np.abs(np.asarray(bias, dtype=np.float64)) * accumulate
    else:
        tol[...] = 0
    tol += per_channel
    if inputs is not None and np.shape(inputs) == tol.shape:
        tol += np.abs(np.asarray(inputs, dtype=work)) * work(u_c * a)
    return tol


def _bias_level(bias: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """max|bias| per channel of a tensor of *shape* (broadcastable against it), without broadcasting the
    bias over a whole sample where it varies per channel only."""
    b = np.abs(np.asarray(bias, dtype=np.float64))
    if b.size and b.ndim <= len(shape):
        b = b.reshape((1,) * (len(shape) - b.ndim) + b.shape)
        if all(d in (1, s) for d, s in zip(b.shape[1:], shape[1:], strict=True)):
            return channel_max(b)
    return channel_max(b + np.zeros((1,) + tuple(shape[1:])))


def _work_dtype(array: np.ndarray):
    return np.float32 if np.asarray(array).dtype.itemsize <= 4 else np.float64


@dataclass(frozen=True)
class LocalJudgement:
    """One local comparison: worst error over its tolerance (<= 1 passes) and what it was judged by."""

    passed: bool
    worst_ratio: float  # max |c - r| / tol over the elements
    max_abs_error: float
    magnitude: float  # max |r|
    compared: int  # finite elements compared
    nonfinite_mismatch: int  # elements where either side is not finite and the two are not identical
    tolerance: str  # e.g. "local: float16 compute, K=576"


def judge(reference: np.ndarray, candidate: np.ndarray, spread: np.ndarray | None, bias: np.ndarray | None,
          arithmetic: Arithmetic, internal: np.ndarray | float | None = None,
          inputs: np.ndarray | None = None) -> LocalJudgement:
    """Compare *candidate* with *reference* (same input, same layer) under :func:`local_tolerance`.
    Written for few passes over big tensors: a finite max error and magnitude prove both finite, the common case."""
    work = _work_dtype(reference)
    r = np.asarray(reference).astype(work, copy=False)
    c = np.asarray(candidate).astype(work, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.asarray(np.subtract(c, r))  # arrays even for a 0-d tensor (numpy hands back scalars)
        np.abs(error, out=error)
        magnitudes = np.asarray(np.abs(r))
        max_error = float(error.max()) if error.size else 0.0  # max propagates NaN: finite proves both finite
        magnitude = float(magnitudes.max()) if r.size else 0.0
    mismatch, compared = 0, r.size
    if not (math.isfinite(max_error) and math.isfinite(magnitude)):
        ok = np.isfinite(r) & np.isfinite(c)
        odd = ~ok
        same = (r[odd] == c[odd]) | (np.isnan(r[odd]) & np.isnan(c[odd]))
        mismatch, compared = int(np.count_nonzero(~same)), int(np.count_nonzero(ok))
        magnitudes, error = np.where(ok, magnitudes, 0).astype(work), np.where(ok, error, 0).astype(work)
        max_error = float(error.max()) if error.size else 0.0
        magnitude = float(magnitudes.max()) if r.size else 0.0
    tol = _tolerance(magnitudes, spread, bias, arithmetic, internal, inputs)
    np.maximum(tol, np.finfo(work).tiny, out=tol)
    np.divide(error, tol, out=error)
    worst = float(error.max()) if error.size else 0.0
    return LocalJudgement(passed=worst <= 1.0 and mismatch == 0, worst_ratio=worst, max_abs_error=max_error,
                          magnitude=magnitude, compared=compared, nonfinite_mismatch=mismatch,
                          tolerance=f"local: {arithmetic.describe()}")
