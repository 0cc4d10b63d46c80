"""Read-only facts about a built model and matching random inputs, shared by the CLI, tests and benchmarks."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper


def bn_count(model: onnx.ModelProto) -> int:
    return sum(node.op_type == "BatchNormalization" for node in model.graph.node)


def input_shapes(model: onnx.ModelProto, *, batch: int = 1) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes, with every symbolic dimension (the batch ``N``) set to ``batch``."""
    shapes = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else batch for d in dims)
    return shapes


def random_inputs(model: onnx.ModelProto, *, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal feeds in each input's own dtype (float16 for the fp16 variant)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = input_shapes(model, batch=batch)[value.name]
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds
