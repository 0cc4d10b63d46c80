"""DenseNet: every dense layer starts with BatchNormalization on a Concat of all earlier feature maps."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from models.layers import GraphBuilder


@dataclass(frozen=True)
class DenseNetConfig:
    """Defaults are DenseNet-121 (growth 32, blocks 6/12/24/16, bottleneck 4x growth, 0.5 compression)."""

    blocks: tuple[int, ...] = (6, 12, 24, 16)
    growth: int = 32
    init_features: int = 64
    bn_size: int = 4
    classes: int = 1000
    image: int = 224


def _bn_relu(g: GraphBuilder, x: str, scope: str, channels: int) -> str:
    return g.relu(g.batch_norm(x, scope, channels), f"{scope}_relu")


def _join(g: GraphBuilder, features: list[str], scope: str) -> str:
    return features[0] if len(features) == 1 else g.concat(features, scope)


def _dense_block(g: GraphBuilder, x: str, scope: str, channels: int, n_layers: int, cfg: DenseNetConfig) -> str:
    """Pre-activation layers: Concat -> BN -> Relu -> Conv1x1 -> BN -> Relu -> Conv3x3 (growth channels)."""
    features = [x]
    inner = cfg.bn_size * cfg.growth
    for i in range(n_layers):
        layer = f"{scope}.denselayer{i + 1}"
        y = _bn_relu(g, _join(g, features, f"{layer}.cat"), f"{layer}.norm1", channels + i * cfg.growth)
        y = g.conv(y, f"{layer}.conv1", channels + i * cfg.growth, inner, 1)
        y = g.conv(_bn_relu(g, y, f"{layer}.norm2", inner), f"{layer}.conv2", inner, cfg.growth, 3)
        features.append(y)
    return g.concat(features, f"{scope}.cat")


def build_densenet(cfg: DenseNetConfig, seed: int) -> onnx.ModelProto:
    g = GraphBuilder(seed)
    x = g.conv_bn("input", "features.conv0", 3, cfg.init_features, 7, stride=2, bn_scope="features.norm0")
    x = g.max_pool(x, "features.pool0", 3, 2, pad=1)
    channels = cfg.init_features
    for b, n_layers in enumerate(cfg.blocks):
        x = _dense_block(g, x, f"features.denseblock{b + 1}", channels, n_layers, cfg)
        channels += n_layers * cfg.growth
        if b + 1 < len(cfg.blocks):
            scope = f"features.transition{b + 1}"
            x = g.conv(_bn_relu(g, x, f"{scope}.norm", channels), f"{scope}.conv", channels, channels // 2, 1)
            x = g.avg_pool(x, f"{scope}.pool", 2, 2)
            channels //= 2
    x = g.global_avg_pool_flatten(_bn_relu(g, x, "features.norm5", channels), "pool")
    logits = g.gemm(x, "classifier", channels, cfg.classes)
    return g.build("densenet", [("input", ("N", 3, cfg.image, cfg.image))], [("logits", logits, ("N", cfg.classes))])
