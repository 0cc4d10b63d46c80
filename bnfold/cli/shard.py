"""``--shard K/N``: split a batch of models among N jobs of a CI matrix, each model in exactly one shard.

A model's shard is decided by a hash of its relative path alone (SHA-256, not Python's salted ``hash``),
never by its position in a listing: every job computes the same split without talking to the others, a
model added or removed moves no other model, and the N shards together hold every model exactly once.
K counts from 1 (``--shard 1/4`` ... ``--shard 4/4``), as a matrix index plus one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import PurePath
from typing import TypeVar

import click

T = TypeVar("T")


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` with 1 <= K <= N."""
    k_text, sep, n_text = text.partition("/")
    try:
        k, n = int(k_text), int(n_text)
    except ValueError:
        k = n = 0
    if not sep or n < 1 or not 1 <= k <= n:
        raise click.BadParameter(f"expected K/N with 1 <= K <= N, such as 1/4, got {text!r}")
    return k, n


def _callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    return None if value is None else parse_shard(value)


shard_option = click.option(
    "--shard", callback=_callback, default=None, metavar="K/N",
    help="Process only shard K of N (K from 1): a stable split by each model's relative path, for CI matrices.")


def shard_of(relative: PurePath | str, count: int) -> int:
    """The shard (1..count) that owns the model at *relative* (a path relative to the batch's root)."""
    key = PurePath(relative).as_posix().encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % count + 1


def select_shard(items: Sequence[T], shard: tuple[int, int] | None, key: Callable[[T], PurePath | str]) -> list[T]:
    """The *items* of shard K/N (all of them without a shard), in their given order."""
    if shard is None:
        return list(items)
    k, n = shard
    return [item for item in items if shard_of(key(item), n) == k]
