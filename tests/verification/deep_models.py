"""Deep Conv->BN->ReLU chains for the verification tests (fp32, and fp16 with fp32 I/O the way
onnxconverter-common's keep_io_types writes them: a Cast at both ends), and faulty folds to plant in them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from bnfold.fold.rules import RULES
from bnfold.fold.rules.base import Plan
from tests.builders import GraphBuilder


def deep_chain(depth: int = 40, channels: int = 16, size: int = 8, *, fp16: bool = False, seed: int = 0
               ) -> onnx.ModelProto:
    """x -> [Conv3x3 -> BN -> ReLU] x depth -> GlobalAveragePool -> Flatten -> Gemm -> logits, BN running
    statistics like trained ones (means near the channels' real means, variances around theirs)."""
    dtype = np.float16 if fp16 else np.float32
    b = GraphBuilder(seed=seed, dtype=dtype)
    x = b.input("x", [1, channels, size, size], np.float32)
    h = b.node("Cast", [x], to=TensorProto.FLOAT16) if fp16 else x
    b.channels[h] = channels
    rng = np.random.default_rng(seed + 1)
    for i in range(depth):
        conv = b.conv(h, channels, 3, pads=[1, 1, 1, 1], bias=i % 2 == 0)
        gamma = rng.uniform(0.5, 1.5, channels)
        beta = rng.normal(0, 0.2, channels)
        mean = rng.normal(0.2, 0.4, channels)
        var = rng.uniform(0.3, 2.0, channels)
        bn = b.bn(conv, params=[v.astype(dtype) for v in (gamma, beta, mean, var)])
        h = b.node("Relu", [bn])
        b.channels[h] = channels
    pooled = b.node("GlobalAveragePool", [h])
    flat = b.node("Flatten", [pooled])
    logits = b.node("Gemm", [flat, b.init(b.weight([10, channels])), b.init(np.zeros(10, dtype))], transB=1)
    out = b.node("Cast", [logits], to=TensorProto.FLOAT) if fp16 else logits
    b.output(out, np.float32)
    return b.build()


def bn_names(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "BatchNormalization"]


# ---- faults planted in one fold ---------------------------------------------------------------------------

def scale_channel(w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w, b = w.copy(), b.copy()
    w[0] *= w.dtype.type(1.01)
    b[0] *= b.dtype.type(1.01)
    return w, b


def shift_bias(w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = b.copy()
    b[1] += b.dtype.type(0.05 * (float(b.max()) - float(b.min())))
    return w, b


def swap_bias(w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = b.copy()
    order = np.argsort(b)
    b[[order[0], order[-1]]] = b[[order[-1], order[0]]]  # the two most different channels
    return w, b


def in_fp16(w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return w.astype(np.float16).astype(w.dtype), b.astype(np.float16).astype(b.dtype)


MUTANTS = {"scale_1pct": scale_channel, "bias_shift_5pct": shift_bias, "bias_swap": swap_bias,
           "fold_in_fp16": in_fp16}


@dataclass
class FaultyRule:
    """A rule that folds like *inner* but plants *mutate* in the weights of the fold at *anchor*."""

    inner: object
    anchor: str
    mutate: object

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def anchor_ops(self):
        return self.inner.anchor_ops

    def match(self, g, node):
        plan = self.inner.match(g, node)
        if isinstance(plan, Plan) and (node.name or node.output[0]) == self.anchor:
            (w, wrole), (b, brole) = plan.constants[1], plan.constants[2]
            w2, b2 = self.mutate(np.asarray(w), np.asarray(b))
            plan.constants[1], plan.constants[2] = (w2, wrole), (b2, brole)
        return plan

    def rewrite(self, g, plan) -> None:
        self.inner.rewrite(g, plan)


def faulty_rules(anchor: str, mutant: str) -> tuple:
    return tuple(FaultyRule(r, anchor, MUTANTS[mutant]) if r.name == "conv_bn" else r for r in RULES)


def hand_fold_faulty(model: onnx.ModelProto, anchor: str, mutant: str) -> onnx.ModelProto:
    """*model* folded by the faulty rules (no verification): a broken candidate for ``verify``."""
    from bnfold.fold.driver import fold_model

    work = onnx.ModelProto()
    work.CopyFrom(model)
    fold_model(work, faulty_rules(anchor, mutant))
    return work


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
