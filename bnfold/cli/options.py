"""Option groups shared by several commands (input shapes, input files, sampling)."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any

import click

MAX_DIM = 2**63 - 1


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME:1x3x224x224`` or ``NAME:1,3,224,224`` (onnxsim's spelling); the name may itself contain
    ':' (the last one splits). Bare dims (``1,3,224,224``) give the name ``""``: the model's only input
    (see ``cli.input_shapes``)."""
    name, sep, dims = text.rpartition(":")
    if sep and not name:
        raise click.BadParameter(f"expected NAME:DIMS such as input:1,3,224,224, got {text!r}")
    if not dims:
        raise click.BadParameter(f"expected NAME:DIMS such as input:1,3,224,224 (or bare DIMS), got {text!r}")
    try:
        shape = tuple(int(d) for d in re.split(r"[x,]", dims.lower()))
    except ValueError:
        raise click.BadParameter(f"dimensions must be integers joined by ',' or 'x', got {dims!r}") from None
    if any(d < 0 for d in shape):
        raise click.BadParameter(f"dimensions must be >= 0, got {dims!r}")
    if any(d > MAX_DIM for d in shape):
        raise click.BadParameter(f"dimensions must be at most 2^63-1 (ONNX dims are int64), got {dims!r}")
    return name, shape


def parse_range(text: str | None) -> tuple[float, float] | None:
    """Parse ``LOW,HIGH`` for uniform float inputs."""
    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LOW,HIGH such as 0,1, got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and math.isfinite(high - low)):
        raise click.BadParameter(f"LOW and HIGH must be finite, and HIGH - LOW too (at most ~1.8e308), got {text!r}")
    if not low < high:
        raise click.BadParameter(f"LOW must be below HIGH, got {text!r}")
    return low, high


def _shapes_callback(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict:
    return dict(parse_input_shape(v) for v in values)


def _range_callback(_ctx: click.Context, _param: click.Parameter, value: str | None):
    return parse_range(value)


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, callback=_shapes_callback, metavar="NAME:DIMS",
    help="Shape for an input with symbolic dims: x:1,3,224,224 or x:1x3x224x224, or bare 1,3,224,224 for a "
         "model with one input (repeatable).")


def input_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--input-shape, --inputs, --samples, --seed, --range: how models are fed when run."""
    options = [
        input_shape_option,
        click.option("--inputs", "inputs", type=click.Path(exists=True, dir_okay=True), default=None,
                     help="An .npz file (keys = input names) or a folder of .npz files, one sample each."),
        click.option("--samples", type=click.IntRange(min=1), default=2, show_default=True,
                     help="Random input samples to run."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for random inputs."),
        click.option("--range", "value_range", callback=_range_callback, default=None, metavar="LOW,HIGH",
                     help="Draw float inputs uniformly from [LOW, HIGH) instead of a standard normal."),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), func)


freeze_initializers_option = click.option(
    "--freeze-initializers", is_flag=True,
    help="Take initializers out of the graph inputs (IR >= 4: callers could override them, so they are refused "
         "otherwise) and fold them; the report lists the inputs removed. Only for models nobody feeds them to.")


def _rule_list(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


def rule_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--rules / --skip-rules (comma-separated rule names; the library rejects unknown ones)."""
    options = [
        click.option("--rules", callback=_rule_list, default=None, help="Only these rules (comma-separated)."),
        click.option("--skip-rules", callback=_rule_list, default=None,
                     help="All rules but these (comma-separated)."),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), func)
