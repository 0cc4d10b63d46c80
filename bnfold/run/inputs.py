"""Inputs for running a model: concrete shapes for symbolic dims, seeded random data, .npz files.

Unknown dims (a symbol, ``-1``, ``0`` or nothing declared) get concrete values, and every choice is
recorded in :class:`InputSpec` so reports can say exactly what was guessed:

- dim 0 of an input of rank >= 2 is taken to be the batch: ``DEFAULT_BATCH`` (1), or ``batch=``;
- every other unknown dim: ``DEFAULT_DIM`` (64), big enough for a few stride-2 stages, small enough
  to stay fast. Models that need a particular size (a fixed Reshape, a 48-pixel-high text line)
  must be told with ``input_shapes`` (``--input-shape NAME:DIMS``).

Random data (``random_feeds``): seeded, drawn one sample at a time; see ``bnfold.run.random_inputs``.

Files (``load_feeds``): arrays are used exactly as given, never reshaped. A dtype that differs from
the declared one is accepted only when the values survive the cast unchanged (float64 data holding
float32 values, int32 ids for an int64 input); otherwise the error says which input and dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from bnfold.errors import InputSpecError, ShapeGuessError, UsageError
from bnfold.fold.graph import runtime_inputs
from bnfold.report import ReportMixin
from bnfold.run.random_inputs import INT_VALUES, Feeds, RandomFeeds, np_dtype
from bnfold.run.sessions import ModelSource, load_graph

__all__ = ["DEFAULT_BATCH", "DEFAULT_DIM", "INT_VALUES", "Feeds", "InputSpec", "RandomFeeds", "input_specs",
           "random_feeds", "load_feeds", "make_feeds", "format_declared"]

DEFAULT_BATCH = 1
DEFAULT_DIM = 64


@dataclass(frozen=True)
class InputSpec(ReportMixin):
    """One graph input: its dtype, the concrete shape used, and what was guessed to get it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    declared: tuple[int | str | None, ...] | None  # None: the model declares no shape at all
    chosen: dict[int, int] = field(default_factory=dict)  # dim index -> value picked for an unknown dim

    @property
    def guessed(self) -> bool:
        return bool(self.chosen)


def input_specs(
    model: ModelSource,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    batch: int | None = None,
    require_shape: bool = True,
) -> list[InputSpec]:
    """Specs for the graph inputs that are not initializers, in graph order.

    An input that declares no shape at all needs an entry in *input_shapes*, unless
    ``require_shape=False`` (arrays from files bring their own shapes), where it gets shape ().
    """
    values = runtime_inputs(load_graph(model).graph)
    overrides = dict(input_shapes or {})
    unknown = sorted(set(overrides) - {v.name for v in values})
    if unknown:
        raise InputSpecError(
            f"--input-shape names {', '.join(map(repr, unknown))}, not an input of the model; "
            f"its inputs are: {', '.join(v.name for v in values) or '(none)'}"
        )
    if batch is not None and batch < 1:
        raise UsageError(f"batch must be >= 1, got {batch}")
    specs = [_spec(v, overrides.get(v.name), batch, require_shape) for v in values]
    batched = [s for s in specs if s.name not in overrides]
    if batch is not None and batched and not any(0 in s.chosen for s in batched):
        raise InputSpecError(f"cannot set batch {batch}: no input has a dynamic batch dimension (dim 0)")
    return specs


def _declared(value: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def _is_known(dim: int | str | None) -> bool:
    return isinstance(dim, int) and dim > 0


def _dtype_name(value: onnx.ValueInfoProto) -> str:
    if value.type.WhichOneof("value") != "tensor_type":
        raise InputSpecError(f"input {value.name!r} is not a tensor; bnfold can only feed tensors")
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)).name
    except (KeyError, ValueError):
        raise InputSpecError(f"input {value.name!r} has an element type bnfold cannot feed") from None


def _spec(value: onnx.ValueInfoProto, override: Sequence[int] | None, batch: int | None,
          require_shape: bool) -> InputSpec:
    declared = _declared(value)
    dtype = _dtype_name(value)
    if override is not None:
        shape = tuple(int(d) for d in override)
        _check_override(value.name, declared, shape)
        return InputSpec(value.name, dtype, shape, declared, {})
    if declared is None and not require_shape:
        return InputSpec(value.name, dtype, (), None, {})
    if declared is None:
        raise ShapeGuessError(
            f"input {value.name!r} declares no shape; pass it with --input-shape {value.name}:DIMS"
        )
    chosen: dict[int, int] = {}
    for index, dim in enumerate(declared):
        if not _is_known(dim):
            is_batch = index == 0 and len(declared) >= 2
            chosen[index] = (batch or DEFAULT_BATCH) if is_batch else DEFAULT_DIM
    shape = tuple(chosen.get(i, d) for i, d in enumerate(declared))  # type: ignore[misc, arg-type]
    return InputSpec(value.name, dtype, shape, declared, chosen)


def _check_override(name: str, declared: tuple[int | str | None, ...] | None, shape: tuple[int, ...]) -> None:
    if declared is None:
        return
    if len(shape) != len(declared):
        raise InputSpecError(
            f"--input-shape {name}: rank {len(shape)} given, but the model declares rank {len(declared)} "
            f"({format_declared(declared)})"
        )
    _check_fixed_dims(f"--input-shape {name}", declared, shape)


def _check_fixed_dims(what: str, declared: tuple[int | str | None, ...], shape: tuple[int, ...]) -> None:
    clashes = [f"dim {i} is {s}, model fixes it at {d}" for i, (d, s) in enumerate(zip(declared, shape, strict=True))
               if _is_known(d) and d != s]
    if clashes:
        raise InputSpecError(f"{what}: {'; '.join(clashes)} (declared {format_declared(declared)})")


def format_declared(declared: tuple[int | str | None, ...]) -> str:
    """A declared shape as messages show it: ``[1, 3, ?, ?]`` (? for an unknown dim)."""
    return "[" + ", ".join("?" if d is None else str(d) for d in declared) + "]"


def random_feeds(
    specs: Sequence[InputSpec],
    *,
    samples: int = 2,
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
) -> RandomFeeds:
    """*samples* seeded random feeds for *specs*, each drawn when used (``bnfold.run.random_inputs``).

    Refused up front: samples < 1 (UsageError), a dtype that can't be made up and inputs one sample of which
    would not fit in memory (InputSpecError).
    """
    return RandomFeeds(specs, samples, seed, value_range)


def load_feeds(path: str | Path, specs: Sequence[InputSpec]) -> list[Feeds]:
    """Feeds from an .npz file (one sample) or a folder of .npz files (one sample each, sorted by name)."""
    source = Path(path)
    if source.is_dir():
        files = sorted(source.glob("*.npz"))
        if not files:
            raise InputSpecError(f"{source}: folder holds no .npz files")
    elif source.is_file():
        if source.suffix.lower() != ".npz":
            raise InputSpecError(f"{source}: expected an .npz file or a folder of .npz files")
        files = [source]
    else:
        raise InputSpecError(f"{source}: no such file or folder")
    return [_load_one(file, specs) for file in files]


def _load_one(file: Path, specs: Sequence[InputSpec]) -> Feeds:
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as exc:
        raise InputSpecError(f"{file}: cannot read as .npz ({exc})") from None
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        parts = ([f"missing {', '.join(map(repr, missing))}"] if missing else []) + (
            [f"unexpected {', '.join(map(repr, extra))}"] if extra else [])
        raise InputSpecError(f"{file}: {'; '.join(parts)} (model inputs: {', '.join(names)})")
    return {s.name: _conform(file, s, arrays[s.name]) for s in specs}


def _conform(file: Path, spec: InputSpec, array: np.ndarray) -> np.ndarray:
    """*array* as given, or cast to the declared dtype when that loses nothing; never reshaped."""
    what = f"{file}: input {spec.name!r}"
    if spec.declared is not None:
        if array.ndim != len(spec.declared):
            raise InputSpecError(f"{what} has rank {array.ndim} (shape {array.shape}), "
                                 f"the model declares rank {len(spec.declared)} {format_declared(spec.declared)}")
        _check_fixed_dims(what, spec.declared, array.shape)
    target = np_dtype(spec.dtype)
    if array.dtype == target:
        return array
    cast = array.astype(target)
    back = cast.astype(array.dtype)
    exact = np.array_equal(back, array, equal_nan=array.dtype.kind in "fc")
    if not exact:
        raise InputSpecError(f"{what} is {array.dtype}, the model wants {spec.dtype}, and casting changes "
                             f"values; save it as {spec.dtype}")
    return cast


def make_feeds(
    model: ModelSource,
    *,
    inputs: str | Path | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    samples: int = 2,
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
    batch: int | None = None,
) -> tuple[Sequence[Feeds], list[InputSpec]]:
    """Feeds and the specs that describe them: from *inputs* files, else seeded random data (a sequence whose
    samples are drawn one at a time, when used).

    With files, the specs carry the first file's shapes and nothing counts as guessed; *samples*,
    *seed* and *value_range* do not apply, and *input_shapes* / *batch* are refused (the arrays
    carry their own shapes).
    """
    if inputs is not None and (input_shapes or batch is not None):
        raise UsageError("--inputs gives arrays with their own shapes; drop --input-shape / batch")
    if inputs is None:
        specs = input_specs(model, input_shapes, batch=batch)
        return random_feeds(specs, samples=samples, seed=seed, value_range=value_range), specs
    declared = input_specs(model, None, require_shape=False)
    feeds = load_feeds(inputs, declared)
    first = feeds[0]
    specs = [replace(s, shape=tuple(first[s.name].shape), chosen={}) for s in declared]
    return feeds, specs
