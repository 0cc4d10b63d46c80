"""Tensor ranks, for the rules that must prove which axis is the channel axis (MatMul).

Declared value_info/inputs/outputs are used first. Otherwise onnx shape inference runs once, lazily,
on a skeleton of the model whose large tensors carry no data (dims and dtypes only), so it never
copies the weights of a big model.
"""

from __future__ import annotations

import onnx

from bnfold.fold.graph import subgraphs
from bnfold.fold.skeleton import skeleton


def _declared(graph: onnx.GraphProto, ranks: dict[str, int]) -> None:
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            ranks.setdefault(info.name, len(info.type.tensor_type.shape.dim))
    for init in graph.initializer:
        ranks.setdefault(init.name, len(init.dims))
    for node in graph.node:
        for _, sub in subgraphs(node):
            _declared(sub, ranks)


class RankOracle:
    """Answers ``rank(name)`` for tensors anywhere in the model; None when it cannot be known."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self._ranks: dict[str, int] = {}
        _declared(model.graph, self._ranks)
        self._inferred = False

    def rank(self, name: str) -> int | None:
        if name not in self._ranks and not self._inferred:
            self._inferred = True
            try:
                inferred = onnx.shape_inference.infer_shapes(skeleton(self._model), strict_mode=False)
                _declared(inferred.graph, self._ranks)
            except Exception:  # noqa: BLE001 - inference is best effort; unknown rank means refuse
                pass
        return self._ranks.get(name)
