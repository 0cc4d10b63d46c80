"""Option groups shared by several commands (input shapes, input files, sampling)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import click

MAX_DIM = 2**63 - 1


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME:1x3x224x224`` (the name may itself contain ':'; the last one splits)."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name or not dims:
        raise click.BadParameter(f"expected NAME:DIMS such as input:1x3x224x224, got {text!r}")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"dimensions must be integers joined by 'x', got {dims!r}") from None
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
    help="Shape for an input with symbolic dims, e.g. x:1x3x224x224 (repeatable).")


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
