"""``--truth float64``: how far the reference and the candidate each are from exact arithmetic.

The reference model is upcast to float64 (every float tensor, Constant, Cast target and declared type)
and run with onnx's reference evaluator, the same inputs upcast too. Each model's onnxruntime outputs are
then measured against that truth. A fold done in float64 and rounded once should add no error beyond
fp32 rounding: the candidate's error should be about the reference's. The evaluator is pure numpy, so
this is for small models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from bnfold.errors import UnsupportedModelError
from bnfold.fold.graph import subgraphs
from bnfold.report import ReportMixin
from bnfold.run.sessions import ModelSource, create_session, one_line

_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}


@dataclass(frozen=True)
class TruthComparison(ReportMixin):
    """Worst case over samples of max |model - truth| / max |truth| for one output."""

    output: str
    reference_error: float
    candidate_error: float
    truth_magnitude: float


def _upcast_tensor(tensor: TensorProto) -> None:
    if tensor.data_type in _FLOATS:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))


def _upcast_graph(graph: onnx.GraphProto) -> None:
    for tensor in graph.initializer:
        _upcast_tensor(tensor)
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.type.tensor_type.elem_type in _FLOATS:
            info.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _upcast_tensor(attr.t)
            elif node.op_type == "Cast" and attr.name == "to" and attr.i in _FLOATS:
                attr.i = TensorProto.DOUBLE
        for _, sub in subgraphs(node):
            _upcast_graph(sub)


def upcast_to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of *model* computing in float64 wherever it computed in a float type."""
    wide = onnx.ModelProto()
    wide.CopyFrom(model)
    _upcast_graph(wide.graph)
    return wide


def _load(model: ModelSource) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_model_from_string(bytes(model))
    from bnfold.io.model_file import load_model

    return load_model(model)  # type: ignore[arg-type]  # (a DetachedModel would fail here: none is passed)


def _grouped_conv_transpose():
    """onnx's reference ConvTranspose, taught ``group > 1`` (it only runs one group): each group's input
    channels through its slice of the weight, outputs concatenated on the channel axis."""
    from onnx.reference.ops.op_conv_transpose import ConvTranspose

    class GroupedConvTranspose(ConvTranspose):
        op_domain = ""

        def _run(self, X, W, B=None, **attrs):  # type: ignore[override]  # noqa: N803 - ONNX's input names
            group = attrs.get("group") or 1
            if group == 1:
                return super()._run(X, W, B, **attrs)
            attrs["group"] = 1
            c_in, c_out = W.shape[0] // group, W.shape[1]
            parts = [super(GroupedConvTranspose, self)._run(
                X[:, g * c_in:(g + 1) * c_in], W[g * c_in:(g + 1) * c_in],
                None if B is None else B[g * c_out:(g + 1) * c_out], **attrs)[0] for g in range(group)]
            return (np.concatenate(parts, axis=1),)

    GroupedConvTranspose.__name__ = "ConvTranspose"  # the evaluator looks custom ops up by class name
    return GroupedConvTranspose


def _widen(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in feed.items()}


def compare_to_truth(reference: ModelSource, candidate: ModelSource,
                     feeds: Sequence[dict[str, np.ndarray]]) -> tuple[TruthComparison, ...]:
    """Error of each model's outputs against the float64 evaluation of *reference*, per output."""
    from onnx.reference import ReferenceEvaluator

    ref_model = _load(reference)
    names = [o.name for o in ref_model.graph.output]
    sessions = [create_session(reference), create_session(candidate)]
    worst: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in names}
    try:
        evaluator = ReferenceEvaluator(upcast_to_float64(ref_model), new_ops=[_grouped_conv_transpose()])
        truths = [evaluator.run(names, _widen(feed)) for feed in feeds]
    except Exception as exc:  # noqa: BLE001 - the evaluator raises anything; one clear line instead
        raise UnsupportedModelError(f"onnx's reference evaluator cannot run this model in float64 "
                                    f"({type(exc).__name__}: {one_line(exc)[:200]})") from None
    for feed, values in zip(feeds, truths, strict=True):
        truth = dict(zip(names, values, strict=True))
        runs = [dict(zip(names, s.run(names, feed), strict=True)) for s in sessions]
        for name in names:
            exact = np.asarray(truth[name], dtype=np.float64)
            magnitude = float(np.abs(exact).max()) if exact.size else 0.0
            scale = magnitude if magnitude > 0 else 1.0
            for side, run in enumerate(runs):
                error = float(np.abs(run[name].astype(np.float64) - exact).max()) / scale if exact.size else 0.0
                worst[name][side] = max(worst[name][side], error)
            worst[name][2] = max(worst[name][2], magnitude)
    return tuple(TruthComparison(output=n, reference_error=w[0], candidate_error=w[1], truth_magnitude=w[2])
                 for n, w in worst.items())

