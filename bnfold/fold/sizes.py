"""Size figures for the before/after table: BatchNormalizations, nodes, parameters, weight bytes."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from bnfold.fold.graph import subgraphs
from bnfold.io.external_data import element_count, expected_nbytes


@dataclass(frozen=True)
class ModelStats:
    batchnorms: int
    nodes: int
    parameters: int
    weight_bytes: int


def _tensor_size(tensor: onnx.TensorProto) -> tuple[int, int]:
    """(elements, bytes of data); strings and unknown types count no bytes."""
    return element_count(tensor), expected_nbytes(tensor) or 0


def model_stats(model: onnx.ModelProto) -> ModelStats:
    """Counts over the main graph and all subgraphs; Constant-node tensors count as parameters."""
    totals = [0, 0, 0, 0]

    def visit(graph: onnx.GraphProto) -> None:
        tensors = list(graph.initializer)
        for node in graph.node:
            totals[1] += 1
            totals[0] += node.op_type == "BatchNormalization"
            if node.op_type == "Constant":
                tensors.extend(a.t for a in node.attribute if a.name == "value")
            for _, sub in subgraphs(node):
                visit(sub)
        for tensor in tensors:
            count, nbytes = _tensor_size(tensor)
            totals[2] += count
            totals[3] += nbytes

    visit(model.graph)
    return ModelStats(batchnorms=totals[0], nodes=totals[1], parameters=totals[2], weight_bytes=totals[3])
