"""conv_bn: fold a BatchNormalization into the Conv that produces its input.

Before:  x -> Conv(W, b) -> BatchNormalization(gamma, beta, mean, var, eps) -> y
After:   x -> Conv(W', b') -> y            (the Conv keeps its name and takes the BN's output name)

Math (per output channel o, float64, rounded once):
    s = gamma / sqrt(var + eps),  t = beta - mean * s
    W'[o, ...] = W[o, ...] * s[o],  b'[o] = b[o] * s[o] + t[o]   (b = 0 when absent)
Any group count, 1-D/2-D/3-D, strides, dilations, pads and auto_pad: the map is per output channel.
Conv -> BN -> BN folds completely because the driver runs to a fixed point.

Refuses (Reason): the Conv output has another reader or is a graph output; W/b or BN parameters are
not constants or are overridable initializers; BN in training mode or its extra outputs used;
spatial=0 (opset < 9); folded values overflow/underflow the weight dtype; shape mismatch.
"""

from bnfold.fold.rules._common import ProducerBnRule

RULE = ProducerBnRule("conv_bn", "Conv")
