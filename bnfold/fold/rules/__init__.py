"""The folding rules, in the order the driver tries them at each node.

Producer-side folds come first (they remove a node and touch one weight), then the producer folds
that look through data-moving ops (transparent_bn) or across a Concat / Add (concat_bn, add_bn);
bn_conv is the fallback for a BN that no producer can absorb; affine_chain and matmul_affine fold
Mul/Add/Sub/Div scale-shift blocks into their producer; affine_conv and bn_gemm fold a scale-shift (or
BN) into the layer that reads it, last, because a producer fold keeps the following layer untouched.
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
