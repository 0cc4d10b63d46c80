"""U-Net for 2-D images and 3-D volumes: double Conv -> BN -> Relu, ConvTranspose -> BN upsampling, skip Concats."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from models.layers import GraphBuilder


@dataclass(frozen=True)
class UNetConfig:
    """``spatial`` is 2 or 3; ``depth`` down-sampling steps; ``grouped_up`` groups the deepest ConvTranspose."""

    spatial: int = 2
    in_channels: int = 3
    classes: int = 2
    base: int = 64
    depth: int = 4
    size: int = 256
    conv_bias: bool = False
    grouped_up: bool = False


def _double_conv(g: GraphBuilder, x: str, scope: str, c_in: int, c_out: int, cfg: UNetConfig) -> str:
    for i, c in enumerate((c_in, c_out)):
        x = g.conv_bn(x, f"{scope}.conv{i + 1}", c, c_out, 3, bias=cfg.conv_bias, spatial=cfg.spatial)
    return x


def _up(g: GraphBuilder, x: str, scope: str, c_in: int, cfg: UNetConfig, group: int) -> str:
    """Learned 2x upsampling, then BN -> Relu on the ConvTranspose output (a fold target of its own)."""
    y = g.conv_transpose(x, f"{scope}.up", c_in, c_in // 2, group=group, spatial=cfg.spatial)
    return g.relu(g.batch_norm(y, f"{scope}.up_bn", c_in // 2), f"{scope}.up_relu")


def build_unet(cfg: UNetConfig, seed: int) -> onnx.ModelProto:
    """Encoder of ``depth`` stages (widths base * 2^i), bottleneck, mirrored decoder, 1x1 Conv to class logits."""
    g = GraphBuilder(seed)
    widths = [cfg.base * 2**i for i in range(cfg.depth + 1)]
    x = _double_conv(g, "input", "enc0", cfg.in_channels, widths[0], cfg)
    skips = [x]
    for i in range(1, cfg.depth + 1):
        x = g.max_pool(x, f"down{i}", 2, 2, spatial=cfg.spatial)
        x = _double_conv(g, x, f"enc{i}", widths[i - 1], widths[i], cfg)
        skips.append(x)
    for i in range(cfg.depth - 1, -1, -1):
        group = 2 if cfg.grouped_up and i == cfg.depth - 1 else 1
        up = _up(g, x, f"dec{i}", widths[i + 1], cfg, group)
        x = g.concat([skips[i], up], f"dec{i}.cat")
        x = _double_conv(g, x, f"dec{i}", 2 * widths[i], widths[i], cfg)
    logits = g.conv(x, "head", widths[0], cfg.classes, 1, bias=True, spatial=cfg.spatial)
    spatial_shape = (cfg.size,) * cfg.spatial
    return g.build(
        f"unet{cfg.spatial}d",
        [("input", ("N", cfg.in_channels, *spatial_shape))],
        [("logits", logits, ("N", cfg.classes, *spatial_shape))],
    )
