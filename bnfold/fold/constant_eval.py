"""Evaluate tensors that are constant at load time: initializers, Constant nodes, and small
constant-only subgraphs (Identity, Cast, Reshape, Unsqueeze, ...) that exporters put in front
of weights. Folding needs these values; evaluating them here keeps them from blocking a fold.

Only ops whose numpy evaluation is bit-exact with onnxruntime are listed (pure data movement
and casts), so a fold never depends on arithmetic we evaluated differently from the runtime.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnfold.io.model_file import DEFAULT_DOMAINS

CONSTANT_OPS = frozenset(
    {"Constant", "Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "ConstantOfShape", "Transpose", "Flatten"}
)


def attribute_values(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node, or None for string/sparse forms we don't fold through."""
    attrs = attribute_values(node)
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    return None


def _axes(node: onnx.NodeProto, args: list[np.ndarray], opset: int, since: int) -> list[int] | None:
    if opset >= since:
        return None if len(args) < 2 else [int(a) for a in args[1].reshape(-1)]
    axes = attribute_values(node).get("axes")
    return None if axes is None else list(axes)


def _reshape(node, args, opset):
    data, shape = args[0], [int(v) for v in args[1].reshape(-1)]
    allow_zero = attribute_values(node).get("allowzero", 0)
    if not allow_zero:
        shape = [data.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return data.reshape(shape)


def _unsqueeze(node, args, opset):
    axes = _axes(node, args, opset, 13) or []
    rank = args[0].ndim + len(axes)
    return np.expand_dims(args[0], tuple(sorted(a % rank for a in axes)))


def _squeeze(node, args, opset):
    axes = _axes(node, args, opset, 13)
    return np.squeeze(args[0]) if axes is None else np.squeeze(args[0], axis=tuple(axes))


def _cast(node, args, opset):
    to = attribute_values(node)["to"]
    return args[0].astype(helper.tensor_dtype_to_np_dtype(to))


def _constant_of_shape(node, args, opset):
    value = attribute_values(node).get("value")
    fill = numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
    return np.full([int(v) for v in args[0].reshape(-1)], fill[0], dtype=fill.dtype)


def _transpose(node, args, opset):
    perm = attribute_values(node).get("perm")
    return np.transpose(args[0], perm)


def _flatten(node, args, opset):
    axis = attribute_values(node).get("axis", 1) % max(args[0].ndim, 1)
    outer = int(np.prod(args[0].shape[:axis], dtype=np.int64))
    return args[0].reshape(outer, -1)


EVALUATORS: dict[str, Callable[[onnx.NodeProto, list[np.ndarray], int], np.ndarray]] = {
    "Identity": lambda node, args, opset: args[0],
    "Cast": _cast,
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "ConstantOfShape": _constant_of_shape,
    "Transpose": _transpose,
    "Flatten": _flatten,
}


def evaluate_node(node: onnx.NodeProto, args: list[np.ndarray], opset: int) -> np.ndarray | None:
    """Evaluate a constant-only node; None if it isn't one we evaluate or the data doesn't fit."""
    if node.op_type == "Constant":
        return constant_node_value(node)
    evaluator = EVALUATORS.get(node.op_type)
    if evaluator is None or node.domain not in DEFAULT_DOMAINS:
        return None
    try:
        return np.asarray(evaluator(node, args, opset))
    except (ValueError, KeyError, IndexError, TypeError):
        return None
