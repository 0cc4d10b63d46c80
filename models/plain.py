"""Plain conv stacks: VGG-11 with BN (biased convs) and a small classifier whose head has BatchNorm1d after Gemm."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from models.layers import GraphBuilder

VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@dataclass(frozen=True)
class VggConfig:
    """``width_div`` divides every conv width (1 = VGG-11); the head is GAP -> Linear -> Relu -> Linear."""

    width_div: int = 1
    hidden: int = 4096
    classes: int = 1000
    image: int = 224


@dataclass(frozen=True)
class Bn1dClassifierConfig:
    width: int = 16
    hidden: int = 64
    classes: int = 10
    image: int = 32


def build_vgg_bn(cfg: VggConfig, seed: int) -> onnx.ModelProto:
    """VGG-11-BN features: Conv (with bias, as torchvision) -> BN -> Relu, MaxPool between stages."""
    g = GraphBuilder(seed)
    x, channels, index = "input", 3, 0
    for item in VGG11_LAYOUT:
        if item == "M":
            x = g.max_pool(x, f"features.{index}", 2, 2)
            index += 1
            continue
        c_out = int(item) // cfg.width_div
        x = g.conv_bn(x, f"features.{index}", channels, c_out, 3, bias=True, bn_scope=f"features.{index + 1}")
        channels, index = c_out, index + 3
    x = g.global_avg_pool_flatten(x, "avgpool")
    x = g.relu(g.gemm(x, "classifier.0", channels, cfg.hidden, relu_init=True), "classifier.1")
    logits = g.gemm(x, "classifier.3", cfg.hidden, cfg.classes)
    return g.build("vgg11_bn", [("input", ("N", 3, cfg.image, cfg.image))], [("logits", logits, ("N", cfg.classes))])


def build_classifier_bn1d(cfg: Bn1dClassifierConfig, seed: int) -> onnx.ModelProto:
    """Conv trunk, then an MLP head where BatchNorm1d normalises [N, C] Gemm outputs (with and without Gemm bias)."""
    g = GraphBuilder(seed)
    w = cfg.width
    x = g.conv_bn("input", "trunk.0", 3, w, 3)
    x = g.conv_bn(x, "trunk.1", w, 2 * w, 3, stride=2)
    x = g.conv_bn(x, "trunk.2", 2 * w, 4 * w, 3, stride=2)
    x = g.global_avg_pool_flatten(x, "pool")
    x = g.gemm(x, "head.fc1", 4 * w, cfg.hidden, relu_init=True)
    x = g.relu(g.batch_norm(x, "head.bn1", cfg.hidden), "head.relu1")
    x = g.gemm(x, "head.fc2", cfg.hidden, cfg.hidden, bias=False, relu_init=True)
    x = g.relu(g.batch_norm(x, "head.bn2", cfg.hidden), "head.relu2")
    logits = g.gemm(x, "head.fc3", cfg.hidden, cfg.classes)
    return g.build(
        "classifier_bn1d", [("input", ("N", 3, cfg.image, cfg.image))], [("logits", logits, ("N", cfg.classes))]
    )
