"""bn_conv: fold a BatchNormalization into the unpadded Conv that reads it.

Before:  x -> BatchNormalization -> z -> Conv(W, b, group=g, pads=0) -> y
After:   x -> Conv(W', b') -> y           (the Conv keeps its name and output)

Math, with the BN as z = s * x + t per input channel c, and c(o, i) = (o // (C_out/g)) * (C_in/g) + i:
    W'[o, i, k] = W[o, i, k] * s[c(o, i)]
    b'[o]       = b[o] + sum_{i, k} W[o, i, k] * t[c(o, i)]
This is exact only when every output position sees only real input (no zero padding): a padded
border would see 0 in the original but the fold effectively feeds it -t/s. So all pads must be 0
(or auto_pad VALID, or SAME with a 1x1... kernel, which pads nothing).

Refuses: CONSUMER_CONV_PADDED; BN_HAS_OTHER_CONSUMERS / BN_OUTPUT_IS_GRAPH_OUTPUT; the BN output is
the Conv's weight rather than its data; and the common refusals (constants, training, dtype).
"""

from __future__ import annotations

import onnx

from bnfold.fold.constant_eval import DEFAULT_DOMAINS, attribute_values
from bnfold.fold.rules._axes import pads_nothing
from bnfold.fold.rules._common import bn_affine, following_conv_fold, for_chain, weights, write_constants
from bnfold.fold.rules.base import Plan, Refusal
from bnfold.reasons import Reason


class BnConvRule:
    name = "bn_conv"
    anchor_ops = frozenset({"BatchNormalization"})

    def match(self, g, bn: onnx.NodeProto) -> Plan | Refusal | None:
        z = bn.output[0]
        readers = g.readers(z)
        convs = [n for n in readers if n.op_type == "Conv" and n.domain in DEFAULT_DOMAINS]
        if not convs:
            return None
        if g.is_graph_output(z):
            return Refusal(Reason.BN_OUTPUT_IS_GRAPH_OUTPUT, z)
        conv = convs[0]
        if not g.only_reader(z, conv):  # (z is no graph output: refused just above)
            return Refusal(Reason.BN_HAS_OTHER_CONSUMERS, f"{z} read by {len(readers)} nodes")
        if conv.input[0] != z:
            return None
        found = weights(g, conv, (1, 2))
        if isinstance(found, Refusal):
            return found
        weight, bias = found
        assert weight is not None  # W (input 1) is a required input
        if not pads_nothing(conv, weight.shape[2:]):
            return Refusal(Reason.CONSUMER_CONV_PADDED, conv.name or conv.output[0])
        affine = bn_affine(g, bn)
        if isinstance(affine, Refusal):
            return affine
        scale, shift = affine
        group = attribute_values(conv).get("group", 1)
        if scale.shape != (weight.shape[1] * group,):
            return Refusal(Reason.SHAPE_MISMATCH, f"{scale.shape[0]} channels vs conv input {weight.shape[1] * group}")
        folded = following_conv_fold(g, conv, weight, bias, scale, shift, group)
        if isinstance(folded, Refusal):
            return folded
        new_w, new_b, w64, b64 = folded
        return Plan(anchor=bn, target=conv, constants={1: (new_w, "weight"), 2: (new_b, "bias")},
                    precise=for_chain(g, conv.output[0], {1: w64, 2: b64}),
                    surviving_output=conv.output[0], removed_tensors={z: None})

    def rewrite(self, g, plan: Plan) -> None:
        conv, bn = plan.target, plan.anchor
        write_constants(g, conv, plan)
        conv.input[0] = bn.input[0]
        g.remove_node(bn)


RULE = BnConvRule()
