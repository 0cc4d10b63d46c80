"""Recompute sites of the candidate on the reference's values and judge each against the reference's own
value of the same tensor, with the tolerance of that layer's arithmetic (:mod:`bnfold.verification.bound`).

Used twice: by ``optimize`` for every applied fold (a fold is judged by its own error only, whatever its
depth: upstream rounding never reaches it, because its input is the reference's), and by
``verify --per-layer`` for every compared tensor (a node whose recomputation disagrees is where a divergence
starts; error that only accumulates from upstream is drift). The reference runs once per sample; its values
are handed to :meth:`LocalCheck.observe` and dropped after it, so one model's worth of tensors is alive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import numpy_helper

from bnfold.io.external_data import expected_nbytes
from bnfold.run.lending import LEND_MIN_BYTES
from bnfold.run.local_eval import LocalNodes, LocalSession, local_name
from bnfold.verification.bound import Arithmetic, LocalJudgement, judge
from bnfold.verification.local_sites import (
    Site,
    bias_of,
    constant_tensors,
    lift,
    reduction_length,
    spread_name,
    twin_nodes,
    window_twin,
)
from bnfold.verification.magnitude_twins import magnitude_name, magnitude_twin
from bnfold.verification.ref_path import (
    ReferenceWeights,
    batchnorm_inverse,
    carried,
    constant_terms,
    finite_range,
    intermediates,
    inverted_peak,
    reference_path,
)

LOCAL_GROUP_BYTES = 16 * 2**20  # reference output bytes of the sites one local model recomputes


@dataclass
class _Worst:
    judgement: LocalJudgement | None = None
    failed_to_run: str | None = None

    def add(self, j: LocalJudgement) -> None:
        prev = self.judgement
        if prev is None:
            self.judgement = j
            return
        worse = j if j.worst_ratio > prev.worst_ratio else prev
        self.judgement = replace(worse, passed=prev.passed and j.passed, compared=prev.compared + j.compared,
                                 magnitude=max(prev.magnitude, j.magnitude),
                                 nonfinite_mismatch=prev.nonfinite_mismatch + j.nonfinite_mismatch)


class LocalCheck:
    """Judges *sites* of *candidate* on every reference sample given to :meth:`observe`."""

    def __init__(self, sites: Sequence[Site], candidate: onnx.ModelProto, provider: str = "cpu",
                 external_folder: str | None = None, reference: tuple[onnx.GraphProto, ReferenceWeights] | None = None,
                 arrays: Mapping[str, np.ndarray] | None = None) -> None:
        """*arrays*: the candidate's weights already read out (those its own session was lent), shared
        instead of read from *candidate* a second time. The local models' sessions are dropped after each
        :meth:`observe` (both callers observe one sample); set ``keep_session`` to keep them for more."""
        self.keep_session = False
        self._groups: list[list[Site]] | None = None
        self._built: dict[int, _Built] = {}
        self.sites = list(sites)
        self._weights: Mapping[str, np.ndarray] = arrays if arrays is not None else {}
        self.paths: dict[str, list[onnx.NodeProto]] = {}
        if reference is not None:
            graph, self.ref_weights = reference
            producer = {o: n for n in graph.node for o in n.output if o}
            inits = {t.name for t in graph.initializer} | set(constant_tensors(graph))
            self.paths = {s.output: reference_path(producer, s.output, s.fed, inits) for s in self.sites}
        # intermediates whose magnitude follows from the site's output (a BatchNormalization's input): not captured
        self.inverse: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {
            (out, t): inv for out, path in self.paths.items() for t in intermediates(path, out)
            if (inv := batchnorm_inverse(path, out, t, self.ref_weights)) is not None}
        self.candidate, self.provider, self.folder = candidate, provider, external_folder
        self.worst: dict[str, _Worst] = {s.output: _Worst() for s in self.sites}

    @property
    def capture(self) -> list[str]:
        """Reference tensors to capture: the sites' inputs and their outputs."""
        names = {n for s in self.sites for n in s.fed} | {s.output for s in self.sites}
        names |= {t for s in self.sites for t in intermediates(self.paths.get(s.output, []), s.output)
                  if (s.output, t) not in self.inverse}
        return sorted(names)

    def observe(self, values: Mapping[str, np.ndarray]) -> None:
        """Judge every site on one sample's reference *values* (which include graph inputs), in groups of
        sites whose outputs hold at most LOCAL_GROUP_BYTES (one local model each, judged and dropped before
        the next runs), so the local values alive at a time stay a fraction of the model's activations."""
        if not self.sites:
            return
        if self._groups is None:
            self._groups = _grouped(self.sites, values)
        for index, sites in enumerate(self._groups):
            self._observe_group(index, sites, values)

    def _observe_group(self, index: int, sites: list[Site], values: Mapping[str, np.ndarray]) -> None:
        built = self._built.get(index)
        try:
            if built is None:
                built = self._build(sites, values)
            local = built.session.run(values)
        except Exception as exc:  # onnxruntime's pybind11 errors, or a model it refuses (ModelLoadError)
            message = " ".join(str(exc).split())[:300]
            for site in sites:
                w = self.worst[site.output]
                w.failed_to_run = w.failed_to_run or message
            return
        if self.keep_session:
            self._built[index] = built
        for site in sites:
            self._judge(site, values, local, built)
            for name in (local_name(site.output), spread_name(site.output), magnitude_name(site.output)):
                local.pop(name, None)  # judged: its local values go now, not with the last site's

    def _judge(self, site: Site, values: Mapping[str, np.ndarray], local: Mapping[str, np.ndarray],
               built: _Built) -> None:
        reference = values[site.output]
        candidate = local[local_name(site.output)]
        if reference.shape != candidate.shape or reference.dtype.kind != "f":
            self.worst[site.output].failed_to_run = "shape or dtype differs from the reference"
            return
        spread = local.get(spread_name(site.output))
        arithmetic = Arithmetic(reference.dtype.name, reduction_length(site, built.shapes))
        bias = bias_of(site, built.arrays, reference.ndim)
        internal = self._internal(site.output, values, reference)
        inputs = local.get(magnitude_name(site.output))
        if not all(_fits(term, reference.shape) for term in (spread, bias, internal)):
            # the bound describes one linear layer; a site that joins several (a Concat of folded
            # producers, say) has per-segment terms that don't cover its output: the outputs judge it
            self.worst[site.output].failed_to_run = "the site joins several layers; judged by the outputs"
            return
        self.worst[site.output].add(judge(reference, candidate, spread, bias, arithmetic, internal, inputs))

    def _twin(self, site: Site, values: Mapping[str, np.ndarray], extra: dict[str, np.ndarray],
              arrays: dict[str, np.ndarray]) -> list:
        """The spread's nodes: the window bound for float32 Conv (cheap), else the exact twin."""
        linear = site.linear
        data = values.get(linear.input[0]) if linear is not None else None
        weight_name = linear.input[1] if linear is not None and len(linear.input) > 1 else ""
        tensor = next((t for t in self.candidate.graph.initializer if t.name == weight_name), None) \
            if weight_name in site.weights else None
        if data is not None and np.asarray(data).dtype == np.float32 and tensor is not None:
            weight = self._array(tensor)
            arrays[weight_name] = weight
            nodes, inits = window_twin(site, weight)
            if nodes:
                extra.update(inits)
                return nodes
        return twin_nodes(site)

    def _array(self, tensor: onnx.TensorProto) -> np.ndarray:
        """*tensor*'s value: the candidate's array where one was handed over, else read from the proto."""
        shared = self._weights.get(tensor.name)
        return shared if shared is not None else numpy_helper.to_array(tensor, self.folder or "")

    def _internal(self, output: str, values: Mapping[str, np.ndarray], reference: np.ndarray) -> np.ndarray | None:
        """The reference's intermediate magnitudes carried to *output*, broadcastable against it."""
        path = self.paths.get(output)
        if not path:
            return None
        total: np.ndarray | None = None
        terms = constant_terms(path, output, self.ref_weights)
        for name in intermediates(path, output):
            inverse = self.inverse.get((output, name))
            if inverse is not None:
                terms.append(carried(path, name, inverted_peak(inverse, reference), output, self.ref_weights))
                continue
            value = values.get(name)
            if value is None or value.dtype.kind != "f" or value.size == 0:
                continue
            terms.append(carried(path, name, _peak(value), output, self.ref_weights))
        for term in terms:
            total = term if total is None else (total + term if total.size == term.size or term.size == 1
                                                 or total.size == 1 else np.maximum(total.max(), term.max()))
        if total is None:
            return None
        channels = reference.shape[1] if reference.ndim >= 2 else 1
        if total.size == channels and reference.ndim >= 2:
            return total.reshape((1, channels) + (1,) * (reference.ndim - 2))
        return np.asarray(total.max())

    def verdicts(self) -> dict[str, LocalJudgement | str]:
        """For each site's output: its worst judgement, or why it could not be judged."""
        out: dict[str, LocalJudgement | str] = {}
        for name, w in self.worst.items():
            out[name] = w.failed_to_run if w.failed_to_run else (w.judgement or "not run")
        return out

    def _build(self, sites: list[Site], values: Mapping[str, np.ndarray]) -> _Built:
        lifted = LocalNodes()
        outputs: list[str] = []
        extra: dict[str, np.ndarray] = {}  # initializers the twins add
        arrays: dict[str, np.ndarray] = {}
        for site in sites:
            lift(site, lifted)
            lifted.extend(self._twin(site, values, extra, arrays))
            outputs.append(local_name(site.output))
            if site.linear is not None:
                outputs.append(spread_name(site.output))
            floats = {n for n in site.fed if n in values and np.asarray(values[n]).dtype.kind == "f"}
            twin = magnitude_twin(site, floats)
            if twin:
                lifted.extend(twin)
                outputs.append(magnitude_name(site.output))
        inits = {t.name: t for t in self.candidate.graph.initializer if t.name in lifted.weights}
        for site in sites:
            for name, tensor in site.constants.items():
                named = onnx.TensorProto()
                named.CopyFrom(tensor)
                named.name = name
                inits.setdefault(name, named)
        small = {n for n, t in inits.items() if _nbytes(t) < LEND_MIN_BYTES and not _external(t)}
        arrays.update({n: self._array(t) for n, t in inits.items() if n not in arrays})
        lent = {n: a for n, a in arrays.items() if n not in small and a.dtype.kind == "f"}
        lent.update(extra)
        lifted.weights.update(extra)
        session = LocalSession(lifted, outputs, inits, lent, values, self.candidate.opset_import, self.provider)
        return _Built(session, {name: tuple(t.dims) for name, t in inits.items()}, arrays)


@dataclass
class _Built:
    """One group's local model: its session, and the shapes and values of the weights it reads."""

    session: LocalSession
    shapes: dict[str, tuple[int, ...]]
    arrays: dict[str, np.ndarray]


def _grouped(sites: list[Site], values: Mapping[str, np.ndarray]) -> list[list[Site]]:
    """*sites* in order, cut into groups whose reference outputs hold at most LOCAL_GROUP_BYTES (a group
    holds one site at least)."""
    groups: list[list[Site]] = [[]]
    size = 0
    for site in sites:
        value = values.get(site.output)
        nbytes = value.nbytes if isinstance(value, np.ndarray) else 0
        if groups[-1] and size + nbytes > LOCAL_GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(site)
        size += nbytes
    return groups


def _peak(value: np.ndarray) -> np.ndarray:
    """max|value| per channel (axis 1; one value below rank 2), non-finite values counted as 0, from the
    channel's range (no |value| temporary of the tensor's size)."""
    low, high = finite_range(value, value.shape[1] if value.ndim >= 2 else 1)
    return np.maximum(high, -low).ravel()


def _fits(term: np.ndarray | float | None, shape: tuple[int, ...]) -> bool:
    """Whether a tolerance term broadcasts against a tensor of *shape* without growing it."""
    if term is None:
        return True
    try:
        return np.broadcast_shapes(np.shape(term), shape) == tuple(shape)
    except ValueError:
        return False


def _external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def _nbytes(t: onnx.TensorProto) -> int:
    """Size of *t*'s raw data, read from its shape (``len(t.raw_data)`` would copy the data out)."""
    if not t.HasField("raw_data"):
        return 0
    expected = expected_nbytes(t)
    return len(t.raw_data) if expected is None else expected
