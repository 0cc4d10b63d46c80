"""Seeded random feeds, made one sample at a time, for every ONNX element type and rank (0-d included).

Distributions (drawn from ``numpy.random.default_rng(seed)``, input by input, sample by sample):

- floats of any width (float64 down to float8/float6/float4, bfloat16): standard normal, or uniform in
  ``value_range``, drawn in float64 and cast once to the declared dtype; complex: the same for both parts;
- integers of any width: uniform in {0, 1} (indices, ids, lengths and masks stay in range);
- bools: fair coin (a scalar bool, an ``If`` condition, is a 0-d array like any other input).

``RandomFeeds`` holds no sample: each is drawn when asked for, so ``--samples 100000`` costs the memory of one
sample, not of all of them. Before anything is drawn the memory one sample needs is estimated, and shapes
that could never fit are refused with the figures instead of failing (or swapping) inside numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bnfold.errors import InputSpecError, UsageError

if TYPE_CHECKING:
    from bnfold.run.inputs import InputSpec

INT_VALUES = (0, 2)  # integers are drawn from [0, 2): see the module docstring

Feeds = dict[str, np.ndarray]


def np_dtype(name: str) -> np.dtype:
    """numpy's dtype for a spec's dtype name; the narrow floats and ints come from ml_dtypes (installed with onnx)."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name.startswith(("bfloat", "float"))


def _is_int(dtype: np.dtype) -> bool:
    return dtype.kind in "iu" or dtype.name.startswith(("int", "uint"))


def sample_bytes(specs: Sequence[InputSpec]) -> int:
    """Peak bytes to draw one sample: every array, plus the float64 draw a float array is cast from."""
    total = 0
    for spec in specs:
        dtype = np_dtype(spec.dtype)
        draw = 8 * (2 if dtype.kind == "c" else 1) if _is_float(dtype) or dtype.kind == "c" else 8
        total += math.prod(spec.shape) * (dtype.itemsize + draw)
    return total


def available_memory() -> int | None:
    """Bytes of memory available now (Linux MemAvailable, else physical memory); None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def check_memory(specs: Sequence[InputSpec]) -> None:
    """Refuse inputs one sample of which could not fit in memory (InputSpecError, with the figures)."""
    needed, available = sample_bytes(specs), available_memory()
    if available is None or needed <= available:
        return
    biggest = max(specs, key=lambda s: math.prod(s.shape) * np_dtype(s.dtype).itemsize)
    shape = "x".join(map(str, biggest.shape)) or "scalar"
    raise InputSpecError(f"inputs too large: one sample needs about {_gib(needed)} of memory (input "
                         f"{biggest.name!r} is {shape} {biggest.dtype}), only {_gib(available)} is available; "
                         "pass a smaller --input-shape")


class RandomFeeds(Sequence):
    """*samples* seeded random feeds, each drawn on demand (iteration, or indexing: sample i is drawn again)."""

    def __init__(self, specs: Sequence[InputSpec], samples: int, seed: int,
                 value_range: tuple[float, float] | None) -> None:
        if samples < 1:
            raise UsageError(f"samples must be >= 1, got {samples}")
        for spec in specs:
            _check_drawable(spec)
        check_memory(specs)
        self.specs, self.samples, self.seed, self.value_range = list(specs), samples, seed, value_range
        self._states: dict[int, Mapping[str, Any]] = {}  # generator state before sample i: a few hundred bytes each

    def __len__(self) -> int:
        return self.samples

    def __iter__(self) -> Iterator[Feeds]:
        rng = np.random.default_rng(self.seed)
        for index in range(self.samples):
            yield self._draw(rng, index)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.samples))]
        if index < 0:
            index += self.samples
        if not 0 <= index < self.samples:
            raise IndexError(f"sample {index} of {self.samples}")
        start = max((i for i in self._states if i <= index), default=None)
        rng = np.random.default_rng(self.seed)
        if start is not None:
            rng.bit_generator.state = self._states[start]
        for position in range(start or 0, index):
            self._draw(rng, position)
        return self._draw(rng, index)

    def _draw(self, rng: np.random.Generator, index: int) -> Feeds:
        self._states.setdefault(index, rng.bit_generator.state)
        return {spec.name: random_array(rng, spec, self.value_range) for spec in self.specs}


def _check_drawable(spec: InputSpec) -> None:
    dtype = np_dtype(spec.dtype)
    if not (_is_float(dtype) or _is_int(dtype) or dtype.kind in "bc"):
        raise InputSpecError(f"input {spec.name!r} has dtype {spec.dtype}; bnfold cannot make random data for it "
                             "(pass --inputs with an .npz file)")


def random_array(rng: np.random.Generator, spec: InputSpec, value_range: tuple[float, float] | None) -> np.ndarray:
    """One input's array: always an ndarray of exactly ``spec.shape`` and the declared dtype, 0-d included."""
    dtype = np_dtype(spec.dtype)
    if dtype.kind == "b":
        return np.asarray(rng.random(spec.shape) < 0.5, dtype=np.bool_)
    if _is_int(dtype):
        return np.asarray(rng.integers(*INT_VALUES, size=spec.shape)).astype(dtype)
    if dtype.kind == "c":
        real, imag = _floats(rng, spec.shape, value_range), _floats(rng, spec.shape, value_range)
        return np.asarray(real + 1j * imag).astype(dtype)
    draw = _floats(rng, spec.shape, value_range)
    if "e8m0" in dtype.name:  # exponent-only, no sign: a negative draw would become NaN
        draw = np.abs(draw)
    with np.errstate(over="ignore"):  # a --range beyond the dtype gives inf, which verification refuses
        return np.asarray(draw).astype(dtype)


def _floats(rng: np.random.Generator, shape: tuple[int, ...], value_range: tuple[float, float] | None) -> np.ndarray:
    if value_range is None:
        return rng.standard_normal(shape)
    return rng.uniform(value_range[0], value_range[1], size=shape)
