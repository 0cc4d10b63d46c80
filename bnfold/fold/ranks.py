"""Tensor ranks, for the rules that must prove which axis is the channel axis (MatMul).

Declared value_info/inputs/outputs are used first. Otherwise onnx shape inference runs once, lazily,
on a skeleton of the model whose large tensors carry no data (dims and dtypes only), so it never
copies the weights of a big model.
"""

from __future__ import annotations

import onnx

from bnfold.fold.graph import subgraphs
from bnfold.fold.skeleton import skeleton

Dim = int | None  # a static size, or None for a symbolic / unknown one


def _declared(graph: onnx.GraphProto, ranks: dict[str, int], shapes: dict[str, tuple[Dim, ...]]) -> None:
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            ranks.setdefault(info.name, len(dims))
            shapes.setdefault(info.name, tuple(d.dim_value if d.dim_value > 0 else None for d in dims))
    for init in graph.initializer:
        ranks.setdefault(init.name, len(init.dims))
        shapes.setdefault(init.name, tuple(int(d) for d in init.dims))
    for node in graph.node:
        for _, sub in subgraphs(node):
            _declared(sub, ranks, shapes)


class RankOracle:
    """Answers ``rank(name)`` for tensors anywhere in the model; None when it cannot be known."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self._ranks: dict[str, int] = {}
        self._shapes: dict[str, tuple[Dim, ...]] = {}
        _declared(model.graph, self._ranks, self._shapes)
        self._inferred = False
        self.renamed: set[str] = set()  # names folds gave tensors whose values they changed

    def _infer(self) -> None:
        self._inferred = True
        try:
            inferred = onnx.shape_inference.infer_shapes(skeleton(self._model), strict_mode=False)
            _declared(inferred.graph, self._ranks, self._shapes)
        except Exception:  # noqa: BLE001 - inference is best effort; unknown rank means refuse
            pass

    def rank(self, name: str) -> int | None:
        if name not in self._ranks and not self._inferred:
            self._infer()
        return self._ranks.get(name)

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        """Static sizes of *name* (None where symbolic), for the rules that must prove an axis mapping.
        A declared shape with unknown sizes is completed by inference where inference knows more."""
        known = self._shapes.get(name)
        if (known is None or None in known) and not self._inferred:
            declared = dict(self._shapes)
            self._shapes.clear()
            self._infer()
            for key, dims in declared.items():  # each size known to either the declaration or inference
                inferred = self._shapes.get(key, dims)
                same_rank = len(inferred) == len(dims)
                self._shapes[key] = tuple(a if a is not None else b for a, b in zip(dims, inferred, strict=True)) \
                    if same_rank else dims
        return self._shapes.get(name)

    def alias(self, new: str, old: str) -> None:
        """*new* names a tensor of the same shape as *old* (a fold renamed it because its value changed)."""
        self.renamed.add(new)
        rank, shape = self.rank(old), self.shape(old)
        if rank is not None:
            self._ranks[new] = rank
        if shape is not None:
            self._shapes[new] = shape
