"""Seeded parameter generators that look like a trained network's, in pure numpy.

Why trained-looking: freshly initialised BatchNormalization has mean 0, var 1, gamma 1, beta 0, which makes every
fold trivially exact. Real checkpoints have running variances spread over orders of magnitude, a few channels that
are nearly dead (var ~ eps), negative gammas and non-zero means; those are what stress the fold arithmetic.

Activations are kept O(1) by tying each gamma to its running variance: the per-channel factor that BN applies,
``gamma / sqrt(var + eps)``, stays in roughly [0.5, 1.2] in magnitude, whatever the variance. Conv weights stay
plain He-normal, so the variance spread lives entirely in the BN statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BN_EPSILON = 1e-5
LOG10_VAR_RANGE = (-4.0, 2.0)
NEAR_ZERO_VAR = 1e-5
MEAN_STD = 0.5
NEGATIVE_GAMMA_FRACTION = 0.1


@dataclass(frozen=True)
class BatchNormParams:
    """The four BatchNormalization inputs after X, in ONNX order (scale, B, input_mean, input_var)."""

    scale: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    var: np.ndarray


def he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """Kaiming-normal weights for a layer followed by ReLU: keeps activation variance roughly constant."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def linear_uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """The uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) init that PyTorch uses for Linear and conv biases."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(np.float32)


def _running_var(rng: np.random.Generator, channels: int) -> np.ndarray:
    """Log-uniform variances with roughly one channel in 16 (at least one) pushed to ~1e-5."""
    var = 10.0 ** rng.uniform(*LOG10_VAR_RANGE, channels)
    n_dead = max(1, channels // 16)
    dead = rng.choice(channels, size=n_dead, replace=False)
    var[dead] = NEAR_ZERO_VAR * rng.uniform(0.5, 1.5, n_dead)
    return var


def _gamma_signs(rng: np.random.Generator, channels: int) -> np.ndarray:
    """Mostly positive, about one in ten negative, and at least one negative once there are four channels."""
    signs = np.where(rng.random(channels) < NEGATIVE_GAMMA_FRACTION, -1.0, 1.0)
    if channels >= 4 and not (signs < 0).any():
        signs[rng.integers(channels)] = -1.0
    return signs


def batch_norm_params(rng: np.random.Generator, channels: int, *, gain: float = 1.0) -> BatchNormParams:
    """Trained-looking BN statistics; ``gain`` shrinks the effective per-channel factor (residual branch ends)."""
    var = _running_var(rng, channels)
    mean = rng.normal(0.0, MEAN_STD, channels)
    factor = gain * rng.uniform(0.5, 1.2, channels) * _gamma_signs(rng, channels)
    gamma = factor * np.sqrt(var + BN_EPSILON)
    beta = rng.normal(0.0, 0.2, channels)
    return BatchNormParams(
        scale=gamma.astype(np.float32),
        bias=beta.astype(np.float32),
        mean=mean.astype(np.float32),
        var=var.astype(np.float32),
    )
