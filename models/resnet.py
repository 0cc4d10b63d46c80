"""ResNet-18/50 in torchvision's layout: bias-free Conv -> BN -> Relu, projection shortcuts, residual Add."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from models.layers import GraphBuilder

RESIDUAL_GAIN = 0.5  # last BN of each branch is small after training (cf. zero-init-residual), keeping depth O(1)


@dataclass(frozen=True)
class ResNetConfig:
    """``width`` is the stem width (64 in the paper); stage widths are width, 2x, 4x, 8x."""

    blocks: tuple[int, ...]
    bottleneck: bool
    width: int = 64
    classes: int = 1000
    image: int = 224
    dtype: type[np.floating] = np.float32


def _basic_block(g: GraphBuilder, x: str, scope: str, c_in: int, planes: int, stride: int) -> tuple[str, int]:
    y = g.conv_bn(x, f"{scope}.conv1", c_in, planes, 3, stride=stride, bn_scope=f"{scope}.bn1")
    y = g.conv_bn(y, f"{scope}.conv2", planes, planes, 3, act=None, bn_scope=f"{scope}.bn2", gain=RESIDUAL_GAIN)
    return _merge(g, x, y, scope, c_in, planes, stride), planes


def _bottleneck_block(g: GraphBuilder, x: str, scope: str, c_in: int, planes: int, stride: int) -> tuple[str, int]:
    c_out = planes * 4
    y = g.conv_bn(x, f"{scope}.conv1", c_in, planes, 1, bn_scope=f"{scope}.bn1")
    y = g.conv_bn(y, f"{scope}.conv2", planes, planes, 3, stride=stride, bn_scope=f"{scope}.bn2")
    y = g.conv_bn(y, f"{scope}.conv3", planes, c_out, 1, act=None, bn_scope=f"{scope}.bn3", gain=RESIDUAL_GAIN)
    return _merge(g, x, y, scope, c_in, c_out, stride), c_out


def _merge(g: GraphBuilder, x: str, y: str, scope: str, c_in: int, c_out: int, stride: int) -> str:
    """Identity or 1x1 projection shortcut (Conv -> BN, no activation), then Add -> Relu."""
    if stride != 1 or c_in != c_out:
        x = g.conv_bn(
            x, f"{scope}.downsample.0", c_in, c_out, 1, stride=stride, act=None, bn_scope=f"{scope}.downsample.1"
        )
    return g.relu(g.add(y, x, f"{scope}.add"), f"{scope}.relu")


def build_resnet(cfg: ResNetConfig, seed: int) -> onnx.ModelProto:
    """Stem (7x7/2 conv, 3x3/2 max-pool), four stages, global average pool, fully connected classifier."""
    g = GraphBuilder(seed, cfg.dtype)
    x = g.conv_bn("input", "conv1", 3, cfg.width, 7, stride=2, bn_scope="bn1")
    x = g.max_pool(x, "maxpool", 3, 2, pad=1)
    block = _bottleneck_block if cfg.bottleneck else _basic_block
    channels = cfg.width
    for stage, n_blocks in enumerate(cfg.blocks):
        planes = cfg.width * 2**stage
        for i in range(n_blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            x, channels = block(g, x, f"layer{stage + 1}.{i}", channels, planes, stride)
    logits = g.gemm(g.global_avg_pool_flatten(x, "avgpool"), "fc", channels, cfg.classes)
    name = f"resnet{sum(cfg.blocks) * (3 if cfg.bottleneck else 2) + 2}"
    name += "_fp16" if np.dtype(cfg.dtype) == np.float16 else ""
    return g.build(name, [("input", ("N", 3, cfg.image, cfg.image))], [("logits", logits, ("N", cfg.classes))])
