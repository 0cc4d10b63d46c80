"""gemm_bn: fold a BatchNormalization over [N, C] (BatchNorm1d after Linear) into the Gemm.

Before:  A -> Gemm(B, C, alpha, beta, transA, transB) -> BatchNormalization -> y     (y is [N, C])
After:   A -> Gemm(B', C', alpha, beta=1, transA, transB) -> y

Math: y = s * (alpha * A B^ + beta * C) + t = alpha * A (B^ s) + (beta * C * s + t)
    B' scales column n of B^ by s[n]  (row n of B when transB=1), C' = beta * C * s + t
C may be absent (C' = t), a scalar, [C], [1, C] or [M, C]; C' broadcasts the same way.

Refuses: as conv_bn.
"""

from bnfold.fold.rules._common import ProducerBnRule

RULE = ProducerBnRule("gemm_bn", "Gemm")
