"""affine_conv: fold a per-channel Mul / Add / Sub / Div into the Conv that reads its output (onnxscript's
AffineConvFusion; bn_conv does the same for a BatchNormalization). Concat -> Mul -> Add -> Conv folds
too: the Add first, then the Mul, each into the Conv.

Before:  x -> Mul(s) -> Add(t) -> z -> Conv(W, b, group=g) -> y
After:   x -> Conv(W', b') -> y           (the Conv keeps its name and output)

Math, with the node as z = a * x + d per input channel (Mul: (s, 0), Add: (1, t), z - c: (1, -c),
c - z: (-1, c), z / c: (1 / c, 0)), as in bn_conv:
    W'[o, i, k] = W[o, i, k] * a[c(o, i)],   b'[o] = b[o] + sum_{i, k} W[o, i, k] * d[c(o, i)]
A zero-padded border sees 0 in the original, a * 0 + d after the fold: exact only if d = 0 (a pure
scale folds into any Conv) or the Conv pads nothing. The constant must broadcast along axis 1 only, and
x must provably have the Conv's input channels and rank (else the constant widens it).

Refuses: CONSUMER_CONV_PADDED (a shift into a padded Conv), BN_HAS_OTHER_CONSUMERS /
BN_OUTPUT_IS_GRAPH_OUTPUT (the node's output read elsewhere or a graph output), NOT_PER_CHANNEL (other
axes, c / z), SHAPE_MISMATCH / RANK_UNKNOWN (x's shape), and the common refusals (constants, dtype, overflow).
"""

from __future__ import annotations

import numpy as np
import onnx

from bnfold.fold.constant_eval import DEFAULT_DOMAINS, attribute_values
from bnfold.fold.rules._axes import pads_nothing, same_shape_refusal, unchanged_name
from bnfold.fold.rules._branches import anchor_affine, data_operand
from bnfold.fold.rules._common import CHAIN_OPS, following_conv_fold, weights, write_constants
from bnfold.fold.rules.base import Plan, Refusal
from bnfold.reasons import Reason


def sole_reader(g, node: onnx.NodeProto, ops: frozenset[str]) -> onnx.NodeProto | Refusal | None:
    """The node of *ops* reading *node*'s output as its data input, checked to be its only reader."""
    out = node.output[0]
    readers = [n for n in g.readers(out) if n.op_type in ops and n.domain in DEFAULT_DOMAINS]
    if not readers:
        return None
    if g.is_graph_output(out):
        return Refusal(Reason.BN_OUTPUT_IS_GRAPH_OUTPUT, out)
    if not g.only_reader(out, readers[0]):
        return Refusal(Reason.BN_HAS_OTHER_CONSUMERS, f"{out} read by {len(g.readers(out))} nodes")
    return readers[0] if readers[0].input[0] == out else None


class AffineConvRule:
    name = "affine_conv"
    anchor_ops = frozenset({"Mul", "Add", "Sub", "Div"})

    def match(self, g, node: onnx.NodeProto) -> Plan | Refusal | None:
        operands = data_operand(g, node)
        if operands is None:
            return None
        data, const_slot = operands
        conv = sole_reader(g, node, frozenset({"Conv"}))
        if conv is None or isinstance(conv, Refusal):
            return conv
        found = weights(g, conv, (1, 2))
        if isinstance(found, Refusal):
            return found
        weight, bias = found
        assert weight is not None  # W (input 1) is a required input
        group = attribute_values(conv).get("group", 1)
        channels = weight.shape[1] * group
        affine = anchor_affine(g, node, const_slot, weight.ndim, channels)
        if isinstance(affine, Refusal):
            return affine
        widened = same_shape_refusal(g, data, weight.ndim, channels)
        if widened is not None:
            return widened
        scale, shift = affine
        if np.any(shift != 0) and not pads_nothing(conv, weight.shape[2:]):
            return Refusal(Reason.CONSUMER_CONV_PADDED, conv.name or conv.output[0])
        folded = following_conv_fold(g, conv, weight, bias, scale, shift, group)
        if isinstance(folded, Refusal):
            return folded
        new_w, new_b, w64, b64 = folded
        upstream = g.producer.get(data)
        chained = upstream is not None and upstream.op_type in CHAIN_OPS  # another fold into this Conv next
        return Plan(anchor=node, target=conv, constants={1: (new_w, "weight"), 2: (new_b, "bias")},
                    precise={1: w64, 2: b64} if chained else {}, surviving_output=unchanged_name(g, conv.output[0]),
                    removed_tensors={node.output[0]: None})

    def rewrite(self, g, plan: Plan) -> None:
        conv, node = plan.target, plan.anchor
        write_constants(g, conv, plan)
        operands = data_operand(g, node)
        assert operands is not None  # match found the data operand of this very node
        conv.input[0] = operands[0]
        g.remove_node(node)


RULE = AffineConvRule()
