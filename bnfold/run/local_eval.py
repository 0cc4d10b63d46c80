"""Evaluate a few nodes of a model on given input values, all in one onnxruntime session.

Verification proves each fold (and, with ``--per-layer``, each node) on the reference's own values of the
node's inputs: the nodes are lifted out of their model into one small model whose graph inputs are those
values. Every node output is renamed (``NAME@local``), so a node reads the fed value of a tensor even where
another lifted node also makes it; initializers the nodes read are lent as arrays (never serialised).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from bnfold.run.lending import PLACEHOLDER, DetachedModel
from bnfold.run.sessions import create_session

LOCAL = "@local"
_TYPES = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.float16): onnx.TensorProto.FLOAT16,
          np.dtype(np.float64): onnx.TensorProto.DOUBLE, np.dtype(np.int64): onnx.TensorProto.INT64,
          np.dtype(np.int32): onnx.TensorProto.INT32, np.dtype(np.bool_): onnx.TensorProto.BOOL,
          np.dtype(np.uint8): onnx.TensorProto.UINT8, np.dtype(np.int8): onnx.TensorProto.INT8}


def local_name(name: str) -> str:
    return name + LOCAL


@dataclass
class LocalNodes:
    """Nodes to lift: each reads fed values (``fed``), initializers, or outputs of nodes listed before it in
    the same group (``internal``: names made inside the group, read under their local name)."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    internal: set[str] = field(default_factory=set)
    fed: set[str] = field(default_factory=set)
    weights: set[str] = field(default_factory=set)

    def add(self, node: onnx.NodeProto, reads: Mapping[str, str]) -> None:
        """*reads*: for each input name of *node*, "fed", "weight" or "internal". A node already lifted (two
        sites share it) is not lifted twice."""
        if any(o and o in self.internal for o in node.output):
            return
        lifted = onnx.NodeProto()
        lifted.CopyFrom(node)
        del lifted.input[:]
        for name in node.input:
            kind = reads.get(name, "")
            lifted.input.append(local_name(name) if kind == "internal" else name)
            if kind == "fed":
                self.fed.add(name)
            elif kind == "weight":
                self.weights.add(name)
        del lifted.output[:]
        lifted.output.extend(local_name(o) if o else "" for o in node.output)
        lifted.name = f"local{len(self.nodes)}"  # node names must be unique, and the twins add more
        self.nodes.append(lifted)
        self.internal.update(o for o in node.output if o)

    def extend(self, nodes: Iterable[onnx.NodeProto]) -> None:
        """Extra nodes written directly in local names (e.g. the magnitude twins verification adds)."""
        self.nodes.extend(nodes)


class LocalSession:
    """One session running every lifted node; ``run(values)`` -> {original output name: array}."""

    def __init__(self, lifted: LocalNodes, outputs: Sequence[str], initializers: Mapping[str, onnx.TensorProto],
                 arrays: Mapping[str, np.ndarray], example: Mapping[str, np.ndarray],
                 opsets: Sequence[onnx.OperatorSetIdProto], provider: str = "cpu") -> None:
        """*outputs*: local names to return; *initializers* / *arrays*: the weights (protos kept inline when
        small, arrays lent); *example*: one value of each fed tensor (its dtype and rank make the input's type)."""
        self.fed = sorted(lifted.fed)
        self.outputs = list(outputs)
        inputs = [_value_info(name, example[name]) for name in self.fed]
        graph = helper.make_graph(lifted.nodes, "bnfold-local", inputs,
                                  [onnx.ValueInfoProto(name=o) for o in self.outputs])
        lent: dict[str, np.ndarray] = {}
        for name in sorted(lifted.weights):
            if name in arrays:
                lent[name] = arrays[name]
                stub = graph.initializer.add(name=name, data_type=_TYPES[arrays[name].dtype], dims=arrays[name].shape)
                stub.data_location = onnx.TensorProto.EXTERNAL
                stub.external_data.add(key="location", value=PLACEHOLDER)
                stub.external_data.add(key="length", value=str(arrays[name].nbytes))
            else:
                graph.initializer.append(initializers[name])
        model = helper.make_model(graph, opset_imports=list(opsets))
        model.ir_version = min(model.ir_version, 9)
        self.session = create_session(DetachedModel(model, lent), provider=provider)

    def run(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: values[name] for name in self.fed}
        return dict(zip(self.outputs, self.session.run(self.outputs, feed), strict=True))


def _value_info(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    array = np.asarray(value)
    elem = _TYPES.get(array.dtype) or helper.np_dtype_to_tensor_dtype(array.dtype)
    return helper.make_tensor_value_info(name, elem, [None] * array.ndim)
