"""Bare ``--input-shape 1,3,224,224``: the shape of a model's only input, named once the model is known."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bnfold.errors import UsageError

BARE = ""  # the name parse_input_shape gives bare dims


def resolve_shapes(model: Path | str, shapes: Mapping[str, tuple[int, ...]] | None) -> dict[str, tuple[int, ...]]:
    """*shapes* with bare dims given to *model*'s only input (its structure is parsed, no weight read);
    UsageError when the model has several inputs. Without bare dims the model is not read at all."""
    shapes = dict(shapes or {})
    if BARE not in shapes:
        return shapes
    from bnfold.io.model_file import load_model

    graph = load_model(model, load_external_data=False).graph
    constant = {init.name for init in graph.initializer}
    names = [value.name for value in graph.input if value.name not in constant]
    if len(names) != 1:
        raise UsageError(f"--input-shape without a name needs a model with one input; {model} has {len(names)}"
                         + (f" ({', '.join(names)}): write NAME:DIMS" if names else ""))
    dims = shapes.pop(BARE)
    shapes.setdefault(names[0], dims)
    return shapes
