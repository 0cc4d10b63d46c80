"""Handing a model's weights to onnxruntime as numpy arrays instead of serialised bytes.

Serialising a 100 MB model and letting onnxruntime parse it back costs more than running it twice, and
verification builds two sessions per check. Instead, :func:`detach` splits an in-memory model into

- its *structure*: the model with every large float initializer replaced by a data-less stub (name,
  dtype, dims), tens of kilobytes however big the model, and
- the *arrays* those stubs stand for,

and :func:`lend` puts the arrays into the session options; the session is made from the structure
serialised. onnxruntime insists that an initializer without data points at external data that exists, so
each stub names an empty placeholder file in a private temporary folder; the data itself always comes
from the lent array, never from that file.

Two ways to lend, chosen by the graph optimization level (measured on resnet50, 98 MiB of weights,
onnxruntime 1.32, RSS growth while the session is created):

- ``add_initializer`` (optimizations disabled, as verification runs): onnxruntime uses the buffers as
  they are, no copy (+17 MiB). With any optimization on, it refuses the session ("External initializer
  ... can not be read"): a graph transformer reads initializers from their (empty) file.
- ``add_external_initializers`` (every other level): accepted at every level, but onnxruntime copies the
  data (+115 MiB with optimizations off, +292 MiB with all on); still below the fallback of serialising
  the whole model (+258 / +371 MiB), so it serves where ``add_initializer`` cannot.

A session onnxruntime still refuses is rebuilt from the whole model by the caller (``run.sessions``);
the lent attempt logs nothing (severity fatal only), so a refusal that is retried prints no
``[E:onnxruntime...]`` line.

Small tensors (shape inputs of Reshape and the like) and non-float ones stay inline: shape inference
reads them, and lending saves nothing there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from bnfold.fold.skeleton import shell
from bnfold.io.external_data import element_count, has_external_data

EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"  # where external data is found
PLACEHOLDER = "bnfold-lent-weights.bin"  # an empty file; onnxruntime only checks that it exists
LEND_MIN_BYTES = 1024
FATAL_ONLY = 4  # onnxruntime's log severity for the lent attempt
_LENDABLE: dict[int, np.dtype] = {
    onnx.TensorProto.FLOAT: np.dtype(np.float32),
    onnx.TensorProto.DOUBLE: np.dtype(np.float64),
    onnx.TensorProto.FLOAT16: np.dtype(np.float16),
}


@dataclass(frozen=True)
class DetachedModel:
    """A model's structure (large float initializers as stubs) and the arrays behind the stubs."""

    structure: onnx.ModelProto
    arrays: dict[str, np.ndarray] = field(repr=False)


def detach(model: onnx.ModelProto) -> DetachedModel | None:
    """Split *model*; None where it cannot be lent this way (tensors in external data files).

    The arrays are copies: later edits of *model* do not reach them. Costs one copy of the lent weights.
    """
    if has_external_data(model):
        return None
    structure = shell(model)
    source, graph = model.graph, structure.graph
    graph.sparse_initializer.extend(source.sparse_initializer)
    arrays: dict[str, np.ndarray] = {}
    for init in source.initializer:
        array = _lendable(init)
        if array is None:
            graph.initializer.append(init)
            continue
        arrays[init.name] = array
        stub = graph.initializer.add(name=init.name, data_type=init.data_type, dims=init.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value=PLACEHOLDER)
        stub.external_data.add(key="length", value=str(array.nbytes))
    return DetachedModel(structure, arrays)


def _lendable(init: onnx.TensorProto) -> np.ndarray | None:
    dtype = _LENDABLE.get(init.data_type)
    if dtype is None or not init.HasField("raw_data"):  # (detach refuses models with external data)
        return None
    nbytes = element_count(init) * dtype.itemsize
    if nbytes < LEND_MIN_BYTES:
        return None
    raw = init.raw_data  # protobuf hands out a copy: the array owns its data
    if len(raw) != nbytes:
        return None  # malformed: left inline for onnxruntime to report
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(init.dims))


def lend(model: DetachedModel, folder: str, options) -> list:
    """Lend *model*'s arrays through *options* (``onnxruntime.SessionOptions``), with the placeholder file
    its stubs name created in *folder*. Returns the values (``OrtValue``) to keep alive as long as the
    session. onnxruntime is imported here, not with the module: the fold path must not pay for it."""
    import onnxruntime as ort

    open(os.path.join(folder, PLACEHOLDER), "wb").close()
    options.add_session_config_entry(EXTERNAL_FOLDER_KEY, folder)
    options.log_severity_level = FATAL_ONLY  # a refusal is retried (and reported) with the whole model
    values = [ort.OrtValue.ortvalue_from_numpy(array) for array in model.arrays.values()]
    copying = getattr(options, "add_external_initializers", None)
    if options.graph_optimization_level != ort.GraphOptimizationLevel.ORT_DISABLE_ALL and copying is not None:
        copying(list(model.arrays), values)
        return values
    for name, value in zip(model.arrays, values, strict=True):
        options.add_initializer(name, value)
    return values


def attach(model: DetachedModel) -> onnx.ModelProto:
    """The whole model again (the stubs filled from the arrays): the fallback where lending fails."""
    whole = onnx.ModelProto()
    whole.CopyFrom(model.structure)
    for init in whole.graph.initializer:
        array = model.arrays.get(init.name)
        if array is not None:
            init.ClearField("external_data")
            init.data_location = onnx.TensorProto.DEFAULT
            init.raw_data = array.tobytes()
    return whole
