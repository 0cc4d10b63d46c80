"""Why a BatchNormalization (or affine Mul/Add/Sub/Div) was left in place.

Every refusal in a report carries one of these values plus a human sentence.
``inspect`` and ``optimize`` share this enum, so their answers agree.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    NO_FOLDABLE_NEIGHBOUR = "no_foldable_neighbour"
    PRODUCER_HAS_OTHER_CONSUMERS = "producer_has_other_consumers"
    PRODUCER_OUTPUT_IS_GRAPH_OUTPUT = "producer_output_is_graph_output"
    WEIGHT_NOT_CONSTANT = "weight_not_constant"
    PARAMS_NOT_CONSTANT = "params_not_constant"
    OVERRIDABLE_INITIALIZER = "overridable_initializer"
    TRAINING_MODE = "training_mode"
    EXTRA_OUTPUTS_USED = "extra_outputs_used"
    SPATIAL_ZERO = "spatial_zero"
    FOLD_OVERFLOW = "fold_overflow"
    FOLD_UNDERFLOW = "fold_underflow"
    CONSUMER_CONV_PADDED = "consumer_conv_padded"
    BN_HAS_OTHER_CONSUMERS = "bn_has_other_consumers"
    BN_OUTPUT_IS_GRAPH_OUTPUT = "bn_output_is_graph_output"
    MATMUL_LAYOUT = "matmul_layout"
    RANK_UNKNOWN = "rank_unknown"
    NOT_PER_CHANNEL = "not_per_channel"
    SHAPE_MISMATCH = "shape_mismatch"
    UNSUPPORTED_DTYPE = "unsupported_dtype"
    RULE_DISABLED = "rule_disabled"
    REVERTED_BY_VERIFICATION = "reverted_by_verification"
    # folds through transparent ops, across Concat/Add and into the next layer (issue 12)
    AXIS_UNPROVEN = "axis_unproven"
    CONCAT_AXIS = "concat_axis"
    BRANCH_NOT_FOLDABLE = "branch_not_foldable"
    CONSUMER_LAYOUT = "consumer_layout"

    @property
    def sentence(self) -> str:
        return SENTENCES[self]


SENTENCES: dict[Reason, str] = {
    Reason.NO_FOLDABLE_NEIGHBOUR: "no Conv/ConvTranspose/Gemm/MatMul producer or reader to fold into",
    Reason.PRODUCER_HAS_OTHER_CONSUMERS: "the producer's output is also read by another node, which needs it unfolded",
    Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT: "the producer's output is a graph output, which must keep its value",
    Reason.WEIGHT_NOT_CONSTANT: "the weight or bias is computed at run time, not a constant",
    Reason.PARAMS_NOT_CONSTANT: "the normalization parameters are computed at run time, not constants",
    Reason.OVERRIDABLE_INITIALIZER: "a weight or parameter is also a graph input, so users may override it",
    Reason.TRAINING_MODE: "the node runs in training mode (batch statistics), which is not an affine map",
    Reason.EXTRA_OUTPUTS_USED: "its running-statistics outputs are used",
    Reason.SPATIAL_ZERO: "opset < 9 BatchNormalization with spatial=0 normalizes per activation, not per channel",
    Reason.FOLD_OVERFLOW: "the folded weights would overflow the weight dtype to inf",
    Reason.FOLD_UNDERFLOW: "a channel with non-zero weights and scale would underflow to all zeros in the weight dtype",
    Reason.CONSUMER_CONV_PADDED: "the reading Conv pads with zeros, which the normalization does not map to zero",
    Reason.BN_HAS_OTHER_CONSUMERS: "its output is read by more than one node",
    Reason.BN_OUTPUT_IS_GRAPH_OUTPUT: "its output is a graph output",
    Reason.MATMUL_LAYOUT: "the MatMul's constant operand does not carry the normalized channel axis",
    Reason.RANK_UNKNOWN: "the rank of an operand is unknown, so the channel axis cannot be proven",
    Reason.NOT_PER_CHANNEL: "the constant does not broadcast along the channel axis only",
    Reason.SHAPE_MISMATCH: "parameter shapes do not match the number of channels",
    Reason.UNSUPPORTED_DTYPE: "the tensors are not floating point",
    Reason.RULE_DISABLED: "the rule that would fold it was disabled by the user",
    Reason.REVERTED_BY_VERIFICATION: "the fold was applied, failed verification, and was reverted",
    Reason.AXIS_UNPROVEN: "an op between the producer and the normalization moves data, and its channel mapping "
                          "cannot be proven from static shapes",
    Reason.CONCAT_AXIS: "the Concat does not join along the normalized channel axis",
    Reason.BRANCH_NOT_FOLDABLE: "an input of the Concat/Add is not produced by a foldable node read only there",
    Reason.CONSUMER_LAYOUT: "the reading Gemm/MatMul does not contract over the normalized channel axis",
}
