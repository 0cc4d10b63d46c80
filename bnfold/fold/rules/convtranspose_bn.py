"""convtranspose_bn: fold a BatchNormalization into the ConvTranspose producing its input.

Before:  x -> ConvTranspose(W, b, group=g) -> BatchNormalization -> y
After:   x -> ConvTranspose(W', b') -> y

Layout trap: W is [C_in, C_out/g, k...]; output channel o = group_index * (C_out/g) + j lives in
column j of the rows belonging to that group. So W is viewed as [g, C_in/g, C_out/g, k...] and scaled
by s viewed as [g, 1, C_out/g, 1...]. Any output_padding, strides, dilations, pads, 1-D/2-D/3-D.
    W'[gi, i, j, ...] = W[gi, i, j, ...] * s[gi*(C_out/g) + j],   b' = b * s + t

Refuses: as conv_bn.
"""

from bnfold.fold.rules._common import ProducerBnRule

RULE = ProducerBnRule("convtranspose_bn", "ConvTranspose")
