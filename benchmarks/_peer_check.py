"""Judging a tool's output against the original, independently of bnfold's own verification code.

Both models run in onnxruntime with graph optimizations DISABLED: with them on, onnxruntime would fuse
Conv+BN in the original too, and we would be comparing onnxruntime's fold with a tool's fold instead of with
the model as written. Errors are reported relative to max|original output| (per output), so one tolerance fits
logits, feature maps and near-zero detection maps alike.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from _peer_tools import one_line
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

Feeds = dict[str, np.ndarray]
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from graphs(sub)


def count_ops(model: onnx.ModelProto, ops: Sequence[str]) -> int:
    return sum(node.op_type in ops for g in graphs(model.graph) for node in g.node)


def _nonfinite(array: np.ndarray) -> bool:
    """inf/NaN in a float array; "V" covers ml_dtypes' bfloat16/float8, which numpy sees as void."""
    if array.dtype.kind not in "fV":
        return False
    try:
        return not np.isfinite(array.astype(np.float64)).all()
    except (TypeError, ValueError):  # a void dtype that is not a float format
        return False


def _constant_only_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Main-graph nodes computed from constants alone (Constant nodes included), in graph order."""
    known = {t.name for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" or (inputs and all(name in known for name in inputs)):
            found.append(node)
            known.update(node.output)
    return found


def constant_only_ops(model: onnx.ModelProto) -> int:
    """Constant-only nodes other than Constant: work a fold should have done offline. A tool that swaps BN
    for such nodes has rewritten the model, not folded it."""
    return sum(node.op_type != "Constant" for node in _constant_only_nodes(model))


def _computed_nonfinite(model: onnx.ModelProto) -> int:
    """Outputs of constant-only nodes holding inf/NaN, evaluated with onnx's reference evaluator: it computes in
    the declared dtype, whereas onnxruntime's CPU kernels run many fp16 ops in fp32 and hide an fp16 overflow
    that a fp16 device (or a later constant-folding pass) would produce."""
    nodes = _constant_only_nodes(model)
    names = [out for node in nodes if node.op_type != "Constant" for out in node.output if out]
    if not names:
        return 0
    graph = helper.make_graph(nodes, "constants", [], [helper.make_empty_tensor_value_info(n) for n in names],
                              list(model.graph.initializer))
    try:
        with np.errstate(all="ignore"):  # an overflow here is what we are looking for
            values = ReferenceEvaluator(helper.make_model(graph, opset_imports=model.opset_import)).run(None, {})
    except Exception as exc:  # a constant subgraph the reference evaluator cannot run: not counted, but said
        print(f"constant subgraph not evaluated: {one_line(exc)}", file=sys.stderr)
        return 0
    return sum(isinstance(v, np.ndarray) and _nonfinite(v) for v in values)


def nonfinite_tensors(model: onnx.ModelProto) -> int:
    """How many float initializers, Constant values and constant-only node outputs hold an inf or NaN
    (names change between tools, so a count)."""
    tensors = [t for g in graphs(model.graph) for t in g.initializer]
    tensors += [a.t for g in graphs(model.graph) for n in g.node if n.op_type == "Constant"
                for a in n.attribute if a.name == "value"]
    stored = sum(t.data_type in FLOAT_TYPES and _nonfinite(numpy_helper.to_array(t)) for t in tensors)
    return stored + _computed_nonfinite(model)


def duplicate_names(model: onnx.ModelProto) -> int:
    """Tensor names the main graph defines more than once (input, initializer, node output): a name clash."""
    initialized = [t.name for t in model.graph.initializer]
    defined = [i.name for i in model.graph.input if i.name not in set(initialized)] + initialized
    defined += [out for node in model.graph.node for out in node.output if out]
    return len(defined) - len(set(defined))


def interface(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Real inputs (not backed by an initializer) and outputs, in order."""
    initialized = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initialized], [o.name for o in model.graph.output]


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def random_feeds(sess: ort.InferenceSession, samples: int, seed: int) -> list[Feeds]:
    """Standard-normal floats (0/1 for integers); unknown dims: 1 for the leading one, 64 elsewhere."""
    rng = np.random.default_rng(seed)
    feeds: list[Feeds] = []
    for _ in range(samples):
        feed: Feeds = {}
        for spec in sess.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else (1 if i == 0 else 64) for i, d in enumerate(spec.shape)]
            dtype = _NP_TYPES.get(spec.type)
            feed[spec.name] = (rng.standard_normal(shape).astype(dtype) if dtype is not None
                               else rng.integers(0, 2, shape).astype(np.int64))
        feeds.append(feed)
    return feeds


@dataclass(frozen=True)
class Reference:
    """The original's outputs on fixed feeds, and with the overridable initializers fed changed values."""

    names: list[str]
    feeds: list[Feeds]
    outputs: list[list[np.ndarray]]
    override_feeds: list[Feeds]
    override_outputs: list[list[np.ndarray]]


def reference(model: onnx.ModelProto, samples: int, seed: int, override: dict[str, float]) -> Reference:
    sess = session(model)
    feeds = random_feeds(sess, samples, seed)
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in override}
    changed = [{**f, **{n: (values[n] * k).astype(values[n].dtype) for n, k in override.items()}}
               for f in feeds] if override else []
    return Reference([o.name for o in sess.get_outputs()], feeds, [sess.run(None, f) for f in feeds], changed,
                     [sess.run(None, f) for f in changed])


@dataclass(frozen=True)
class Errors:
    """How far a result's outputs are from the original's, per output (max over samples)."""

    max_abs: float
    rel: list[float]  # max|diff| / max|original|: the error relative to the output's magnitude
    judged: list[float]  # max|diff| / max(1, max|original|): what verdicts use (see problems)
    new_nonfinite: bool  # inf/NaN where the original is finite


@dataclass(frozen=True)
class Measure:
    """Everything recorded for one (model, tool) pair."""

    before: int  # counted ops (BN, or Mul+Add) in the original
    after: int
    inputs_kept: bool
    outputs_kept: bool
    new_nonfinite_weights: int
    constant_ops_added: int  # see constant_only_ops
    duplicate_names: int  # see duplicate_names
    errors: Errors | None = None  # None when the result cannot run
    override_error: float | None = None  # judged error with the overridable initializers fed changed values
    override_removed: bool = False
    run_error: str | None = None

    @property
    def error(self) -> float:
        return max(self.errors.judged, default=0.0) if self.errors else float("nan")


def _compare(names: list[str], expected: list[list[np.ndarray]], sess: ort.InferenceSession,
             feeds: list[Feeds]) -> Errors:
    """Outputs matched by name, by position when the result renamed them."""
    produced = [o.name for o in sess.get_outputs()]
    wanted = [n if n in produced else produced[i] for i, n in enumerate(names)]
    max_abs, rel, judged, new_nonfinite = 0.0, [0.0] * len(names), [0.0] * len(names), False
    for feed, ref in zip(feeds, expected, strict=True):
        for i, (r, c) in enumerate(zip(ref, sess.run(wanted, feed), strict=True)):
            r64, c64 = r.astype(np.float64), np.asarray(c, dtype=np.float64)
            if r64.shape != c64.shape:
                max_abs = rel[i] = judged[i] = float("inf")
                continue
            finite = np.isfinite(r64)
            new_nonfinite |= bool((finite & ~np.isfinite(c64)).any())
            diff = float(np.abs(r64 - c64)[finite & np.isfinite(c64)].max(initial=0.0))
            magnitude = float(np.abs(r64[finite]).max(initial=0.0))
            max_abs = max(max_abs, diff)
            rel[i] = max(rel[i], diff / magnitude if magnitude else diff)
            judged[i] = max(judged[i], diff / max(magnitude, 1.0))
    return Errors(max_abs, rel, judged, new_nonfinite)


def measure(original: onnx.ModelProto, result: onnx.ModelProto, ref: Reference, counted: Sequence[str]) -> Measure:
    ins, outs = interface(original)
    new_ins, new_outs = interface(result)
    facts = dict(before=count_ops(original, counted), after=count_ops(result, counted), inputs_kept=ins == new_ins,
                 outputs_kept=outs == new_outs,
                 new_nonfinite_weights=max(0, nonfinite_tensors(result) - nonfinite_tensors(original)),
                 constant_ops_added=max(0, constant_only_ops(result) - constant_only_ops(original)),
                 duplicate_names=duplicate_names(result))
    override_error, removed = None, False
    try:
        sess = session(result)
        errors = _compare(ref.names, ref.outputs, sess, ref.feeds)
        if ref.override_feeds:
            accepted = {i.name for i in sess.get_inputs()} | {i.name for i in sess.get_overridable_initializers()}
            removed = not set(ref.override_feeds[0]) <= accepted
            if not removed:
                override_error = max(_compare(ref.names, ref.override_outputs, sess, ref.override_feeds).judged)
    except Exception as exc:  # the result is not a model onnxruntime can run: that is the finding
        return Measure(**facts, run_error=one_line(exc))
    return Measure(**facts, errors=errors, override_error=override_error, override_removed=removed)


def problems(m: Measure, tolerance: float) -> list[str]:
    """What is wrong with a result, most serious first; empty when it computes the same as the original.

    The error judged is max|diff| / max(1, max|original output|): relative for outputs of magnitude >= 1 and
    absolute below, because an output that is ~0 everywhere (a detection map on noise) makes a purely relative
    figure blow up from float32 rounding alone."""
    found = [f"does not run: {m.run_error}"] if m.run_error else []
    if m.new_nonfinite_weights:
        found.append("inf in weights")
    nonfinite = m.errors is not None and m.errors.new_nonfinite
    if m.error > tolerance:
        found.append(f"WRONG (err {m.error:.1e}{', inf/NaN in outputs' if nonfinite else ''})")
    elif nonfinite:
        found.append("WRONG (inf/NaN in outputs)")
    if m.override_removed:
        found.append("baked: overridable inputs removed")
    elif m.override_error is not None and m.override_error > tolerance:
        found.append(f"WRONG: ignores overridden feed (err {m.override_error:.1e})")
    if m.duplicate_names:
        found.append(f"{m.duplicate_names} tensor names defined twice")
    if not m.outputs_kept:
        found.append("outputs renamed")
    if not m.inputs_kept:
        found.append("inputs renamed")
    return found
