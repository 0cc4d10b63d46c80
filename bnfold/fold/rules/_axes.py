"""Proving where a channel axis goes: static shapes, per-axis constants, and the channel mapping through
data-moving ops (Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Identity) that some rules fold across.

A mapping is *proven* only from static sizes: a Reshape keeps channel c of axis a at axis b exactly when
the sizes agree (in[a] == out[b]) and so do the products of the sizes after them (then the products before
them agree too, and every element (outer, c, inner) keeps its flat position). Symbolic sizes are fine in
front of the channel axis, never behind it.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from bnfold.fold.constant_eval import DEFAULT_DOMAINS, attribute_values
from bnfold.fold.graph import GraphIndex
from bnfold.fold.rules.base import Refusal
from bnfold.reasons import Reason

TRANSPARENT_OPS = frozenset({"Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})
Shape = tuple  # of int (static) or None (symbolic/unknown)


def shape_of(g: GraphIndex, name: str) -> Shape | None:
    return None if g.ranks is None else g.ranks.shape(name)


def renamed(g: GraphIndex, old: str, base: str | None = None) -> str:
    """A fresh name for the tensor *old*, whose value a fold changes; its shape is known under both."""
    new = g.names.fresh(f"{base or old}_folded")
    if g.ranks is not None:
        g.ranks.alias(new, old)
    return new


def unchanged_name(g: GraphIndex, name: str) -> str:
    """*name* as a fold's surviving output, or "" where an earlier fold made it (nothing to compare with)."""
    return "" if g.ranks is not None and name in g.ranks.renamed else name


def set_beta_one(gemm: onnx.NodeProto) -> None:
    """A Gemm whose bias already holds beta * C: beta becomes 1."""
    for attr in gemm.attribute:
        if attr.name == "beta":
            attr.f = 1.0
            return
    gemm.attribute.append(onnx.helper.make_attribute("beta", 1.0))


def same_shape_refusal(g: GraphIndex, data: str, rank: int, channels: int, axis: int = 1) -> Refusal | None:
    """Why a per-channel constant applied to *data* might not keep its shape: *data* must provably be a
    rank-*rank* tensor with *channels* on *axis* (else the constant would broadcast it wider)."""
    shape = shape_of(g, data)
    if shape is None:
        return Refusal(Reason.RANK_UNKNOWN, data)
    if len(shape) != rank or shape[axis] != channels:
        return Refusal(Reason.SHAPE_MISMATCH, f"{data} has shape {shape}, the layer expects {channels} channels")
    return None


def pads_nothing(conv: onnx.NodeProto, kernel_shape: tuple[int, ...]) -> bool:
    """Whether every output position of *conv* sees only real input (no zero padding)."""
    attrs = attribute_values(conv)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "VALID":
        return True
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return all(k == 1 for k in kernel_shape)
    return all(p == 0 for p in attrs.get("pads", []))


def per_axis(const: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | Refusal:
    """*const* as a [channels] float64 vector, if it broadcasts along *axis* of a rank-*rank* tensor only
    (right-aligned, every other size 1) and never widens that tensor's rank."""
    if const.ndim > rank:
        return Refusal(Reason.NOT_PER_CHANNEL, f"constant of rank {const.ndim} on a rank-{rank} tensor")
    aligned = (1,) * (rank - const.ndim) + tuple(const.shape)
    if any(size != 1 for i, size in enumerate(aligned) if i != axis):
        return Refusal(Reason.NOT_PER_CHANNEL, f"constant shape {const.shape} on axis {axis} of a rank-{rank} tensor")
    if aligned[axis] not in (1, channels):
        return Refusal(Reason.SHAPE_MISMATCH, f"constant shape {const.shape} for {channels} channels")
    return np.broadcast_to(const.reshape(-1).astype(np.float64), (channels,))


def axis_view(vector: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """*vector* shaped to broadcast along *axis* of a rank-*rank* tensor: [C, 1, ..., 1] from that axis on."""
    return vector.reshape((vector.shape[0],) + (1,) * (rank - 1 - axis))


def reshaped_axis(in_shape: Shape, out_shape: Shape, axis: int) -> int | None:
    """Where axis *axis* of *in_shape* lands after a row-major reshape to *out_shape*, if provable."""
    channels, behind = in_shape[axis], in_shape[axis + 1:]
    if channels is None or None in behind:
        return None
    inner = math.prod(behind)
    for b, size in enumerate(out_shape):
        tail = out_shape[b + 1:]
        if size == channels and None not in tail and math.prod(tail) == inner:
            return b
    return None


def _reshape_target(g: GraphIndex, node: onnx.NodeProto, in_shape: Shape) -> Shape | None:
    """The Reshape's output sizes from its constant shape tensor and, where it copies one, its input."""
    found = g.constant(node.input[1]) if len(node.input) > 1 else None
    if found is None or not found.ok:
        return None
    allowzero = attribute_values(node).get("allowzero", 0)
    dims: list[int | None] = []
    for i, d in enumerate(int(v) for v in np.asarray(found.value).reshape(-1)):
        if d == 0 and not allowzero:
            dims.append(in_shape[i] if i < len(in_shape) else None)
        else:
            dims.append(d if d > 0 else None)
    return tuple(dims)


def _merged(a: Shape | None, b: Shape | None) -> Shape | None:
    if a is None or b is None or len(a) != len(b):
        return a if b is None or (a is not None and len(a) != len(b)) else b
    return tuple(x if x is not None else y for x, y in zip(a, b, strict=True))


def moved_axis(g: GraphIndex, node: onnx.NodeProto, axis: int) -> tuple[int, int] | Refusal:
    """(axis, rank) of the channel after transparent *node*, or an AXIS_UNPROVEN refusal naming it."""
    what = f"{node.op_type} {node.name or node.output[0]!r}"
    in_shape = shape_of(g, node.input[0])
    if in_shape is None:
        return Refusal(Reason.AXIS_UNPROVEN, f"{what}: input shape unknown")
    if node.op_type == "Identity":
        return axis, len(in_shape)
    if node.op_type == "Transpose":
        perm = list(attribute_values(node).get("perm", range(len(in_shape) - 1, -1, -1)))
        return perm.index(axis), len(perm)
    out_shape = shape_of(g, node.output[0])
    if node.op_type == "Reshape":
        out_shape = _merged(_reshape_target(g, node, in_shape), out_shape)
    if out_shape is None:
        return Refusal(Reason.AXIS_UNPROVEN, f"{what}: output shape unknown")
    landed = reshaped_axis(in_shape, out_shape, axis)
    if landed is None:
        return Refusal(Reason.AXIS_UNPROVEN, f"{what}: {in_shape} -> {out_shape} does not provably keep axis {axis}")
    return landed, len(out_shape)


def transparent_chain(g: GraphIndex, name: str) -> list[onnx.NodeProto]:
    """The transparent nodes from *name* back to the first other op, nearest that op first (empty when
    *name* comes from no transparent node)."""
    chain: list[onnx.NodeProto] = []
    node = g.producer.get(name)
    while (node is not None and node.op_type in TRANSPARENT_OPS and node.domain in DEFAULT_DOMAINS
           and node.input and list(node.output).index(name) == 0):
        chain.insert(0, node)
        name = node.input[0]
        node = g.producer.get(name)
    return chain


def links_refusal(g: GraphIndex, chain: list[onnx.NodeProto], anchor: onnx.NodeProto) -> Refusal | None:
    """Why the chain can't be folded across: a link that is a graph output or has other readers."""
    readers = [*chain[1:], anchor]
    for node, reader in zip(chain, readers, strict=True):
        name = node.output[0]
        if g.is_graph_output(name):
            return Refusal(Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT, name)
        if not g.only_reader(name, reader):
            return Refusal(Reason.PRODUCER_HAS_OTHER_CONSUMERS, f"{name} ({node.op_type}) is also read elsewhere")
    return None


def matmul_layout(g: GraphIndex, matmul: onnx.NodeProto) -> tuple[int, int, int] | Refusal:
    """(slot of the constant 2-D operand, its free axis, the output axis that free axis lands on)."""
    lookups = [g.constant(name) for name in matmul.input[:2]]
    for name, lookup in zip(matmul.input[:2], lookups, strict=True):
        if lookup.reason is Reason.OVERRIDABLE_INITIALIZER:
            return Refusal(Reason.OVERRIDABLE_INITIALIZER, name)
    found = [lookup.ok for lookup in lookups]
    if found.count(True) != 1:
        return Refusal(Reason.MATMUL_LAYOUT, "no single constant operand")
    slot = found.index(True)
    weight = g.constant(matmul.input[slot]).value
    assert weight is not None  # found[slot] is True: that lookup is ok
    if weight.ndim != 2:
        return Refusal(Reason.MATMUL_LAYOUT, f"constant operand has shape {weight.shape}")
    rank = g.rank(matmul.output[0])
    if rank is None:
        return Refusal(Reason.RANK_UNKNOWN, matmul.output[0])
    if slot == 1:
        return 1, 1, rank - 1
    return 0, 0, max(rank - 2, 0)
