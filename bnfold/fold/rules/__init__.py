"""The folding rules, in the order the driver tries them at each node.

Producer-side folds come first (they remove a node and touch one weight); bn_conv is the fallback
for a BN that its producer can't absorb; affine_chain handles Mul/Add/Sub/Div scale-shift blocks.
"""

from __future__ import annotations

from bnfold.fold.rules import (
    add_bn,
    affine_chain,
    affine_conv,
    bn_conv,
    bn_gemm,
    concat_bn,
    conv_bn,
    convtranspose_bn,
    gemm_bn,
    matmul_affine,
    matmul_bn,
    transparent_bn,
)
from bnfold.fold.rules.base import Plan, Refusal, Rule

RULES: tuple[Rule, ...] = (
    conv_bn.RULE,
    convtranspose_bn.RULE,
    gemm_bn.RULE,
    matmul_bn.RULE,
    transparent_bn.RULE,
    concat_bn.RULE,
    add_bn.RULE,
    bn_conv.RULE,
    affine_chain.RULE,
    matmul_affine.RULE,
    affine_conv.RULE,
    bn_gemm.RULE,
)

RULE_NAMES: tuple[str, ...] = tuple(rule.name for rule in RULES)

__all__ = ["RULES", "RULE_NAMES", "Plan", "Refusal", "Rule"]
