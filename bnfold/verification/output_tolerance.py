"""The end-to-end tolerance of each output: from the arithmetic behind it and the model's measured noise.

Per element the rule is that of :mod:`bnfold.verification.compare`:
``|c - r| <= atol * max(1, max|r| of its channel) + rtol * |r|``. ``atol``/``rtol`` given by the caller
override everything below for float tensors; integer and bool tensors must match exactly.

1. **Compute dtype behind the output**, not the output's dtype: a model converted to float16 with float32
   inputs and outputs (onnxconverter-common's ``keep_io_types``: a Cast at both ends) computes in float16, so
   its float32 outputs carry float16 rounding. The narrowest float type any ancestor of the output computes
   in (a Cast to it, or an initializer of it) decides the row of the table.
2. **Depth**: rounding of independent layers adds like a random walk, so ``atol`` grows with the square root
   of the number of linear layers (Conv, ConvTranspose, Gemm, MatMul) on the longest path to the output,
   beyond ``DEPTH_BASE`` of them: ``atol = table * sqrt(max(1, depth / DEPTH_BASE))``.
3. **Measured noise floor**, only where an output fails the above: the reference is run a second time with
   onnxruntime's graph optimisations enabled (which fuse BatchNormalization into Conv themselves, a second
   legitimate evaluation) and the largest channel-scaled difference between the two is the floor;
   ``atol = max(atol from 1-2, FLOOR_FACTOR * floor)``.

=========  ======  ======
dtype      atol    rtol
=========  ======  ======
float64    1e-9    1e-10
float32    1e-4    1e-5
float16    1e-2    1e-3
bfloat16   5e-2    5e-3
=========  ======  ======

Measurements behind it are in the README ("How verification decides"). The fold itself is proven by the
local check (:mod:`bnfold.verification.local_check`), so these tolerances only have to catch what the local
checks cannot see (folds inside subgraphs, structural damage), not 1 % faults diluted downstream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import onnx

from bnfold.fold.graph import node_reads
from bnfold.verification.compare import Tolerance

DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(atol=1e-9, rtol=1e-10),
    "float32": Tolerance(atol=1e-4, rtol=1e-5),
    "float16": Tolerance(atol=1e-2, rtol=1e-3),
    "bfloat16": Tolerance(atol=5e-2, rtol=5e-3),
}
EXACT = Tolerance(atol=0.0, rtol=0.0)
DEPTH_BASE = 50
FLOOR_FACTOR = 4.0
LINEAR = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_NARROW: dict[int, str] = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}
_WIDTH = {"bfloat16": 0, "float16": 1, "float32": 2, "float64": 3}


@dataclass(frozen=True)
class OutputArithmetic:
    """What lies behind one output: the narrowest float dtype it is computed in (None: its own) and the
    number of linear layers on its longest path from the inputs."""

    compute: str | None
    depth: int


def output_arithmetic(graph: onnx.GraphProto, names: Sequence[str]) -> dict[str, OutputArithmetic]:
    """For each of *names* (tensors of the main graph): its :class:`OutputArithmetic`. One pass, node order."""
    narrow_inits = {t.name: _NARROW[t.data_type] for t in graph.initializer if t.data_type in _NARROW}
    depth: dict[str, int] = {}
    narrow: dict[str, str] = dict(narrow_inits)
    for node in graph.node:
        reads = [n for n in node_reads(node) if n]
        d = max((depth.get(n, 0) for n in reads), default=0) + (node.op_type in LINEAR)
        kinds = [narrow[n] for n in reads if n in narrow]
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), 0)
            if to in _NARROW:
                kinds.append(_NARROW[to])
        k = min(kinds, key=_WIDTH.__getitem__, default=None)
        for out in node.output:
            if out:
                depth[out] = d
                if k is not None:
                    narrow[out] = k
    return {n: OutputArithmetic(narrow.get(n), depth.get(n, 0)) for n in names}


def output_tolerance(dtype: str, arithmetic: OutputArithmetic | None, atol: float | None,
                     rtol: float | None) -> Tolerance:
    """The tolerance of an output of *dtype* (rules 1-2 above; explicit *atol*/*rtol* win)."""
    own = DEFAULT_TOLERANCES.get(dtype)
    if own is None:
        return EXACT
    base = own
    if arithmetic is not None and arithmetic.compute is not None and \
            _WIDTH[arithmetic.compute] < _WIDTH.get(dtype, 99):
        base = DEFAULT_TOLERANCES[arithmetic.compute]
    grow = math.sqrt(max(1.0, (arithmetic.depth if arithmetic else 0) / DEPTH_BASE))
    return Tolerance(atol=base.atol * grow if atol is None else atol,
                     rtol=base.rtol * grow if rtol is None else rtol)


def with_floor(tolerance: Tolerance, floor: float, atol: float | None) -> Tolerance:
    """Rule 3: widen *tolerance* to the measured noise *floor* (not when the caller fixed atol)."""
    if atol is not None or not math.isfinite(floor):
        return tolerance
    return Tolerance(atol=max(tolerance.atol, FLOOR_FACTOR * floor), rtol=tolerance.rtol)


def describe_basis(dtype: str, arithmetic: OutputArithmetic | None, asked: tuple[float | None, float | None]) -> str:
    """What an end-to-end tolerance was derived from, in words for the report."""
    if dtype not in DEFAULT_TOLERANCES:
        return "exact (not a float tensor)"
    if asked[0] is not None and asked[1] is not None:
        return "given atol/rtol"
    compute = arithmetic.compute if arithmetic and arithmetic.compute else dtype
    behind = f"{compute} compute behind {dtype}" if compute != dtype else f"{dtype} compute"
    return f"end to end: {behind}, depth {arithmetic.depth if arithmetic else 0}"
