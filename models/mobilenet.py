"""MobileNetV2: inverted residuals with depthwise 3x3 convolutions (group = channels) and ReLU6 as Clip."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from models.layers import GraphBuilder

# (expansion t, output channels c, repeats n, first stride s) from the MobileNetV2 paper, table 2.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
RESIDUAL_GAIN = 0.5


@dataclass(frozen=True)
class MobileNetV2Config:
    width_mult: float = 1.0
    last_channel: int = 1280
    classes: int = 1000
    image: int = 224


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channel counts the way the reference implementation does (never below 90% of the request)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _inverted_residual(g: GraphBuilder, x: str, scope: str, c_in: int, c_out: int, stride: int, expansion: int) -> str:
    """1x1 expand -> depthwise 3x3 -> linear 1x1 project; Add to the input when shapes allow."""
    hidden = c_in * expansion
    residual = stride == 1 and c_in == c_out
    y = x
    if expansion != 1:
        y = g.conv_bn(y, f"{scope}.expand", c_in, hidden, 1, act="relu6")
    y = g.conv_bn(y, f"{scope}.depthwise", hidden, hidden, 3, stride=stride, group=hidden, act="relu6")
    y = g.conv_bn(y, f"{scope}.project", hidden, c_out, 1, act=None, gain=RESIDUAL_GAIN if residual else 1.0)
    return g.add(x, y, f"{scope}.add") if residual else y


def build_mobilenetv2(cfg: MobileNetV2Config, seed: int) -> onnx.ModelProto:
    g = GraphBuilder(seed)
    channels = make_divisible(32 * cfg.width_mult)
    x = g.conv_bn("input", "features.0", 3, channels, 3, stride=2, act="relu6")
    index = 1
    for expansion, c, repeats, first_stride in INVERTED_RESIDUAL_SETTING:
        c_out = make_divisible(c * cfg.width_mult)
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            x = _inverted_residual(g, x, f"features.{index}", channels, c_out, stride, expansion)
            channels, index = c_out, index + 1
    x = g.conv_bn(x, f"features.{index}", channels, cfg.last_channel, 1, act="relu6")
    logits = g.gemm(g.global_avg_pool_flatten(x, "pool"), "classifier.1", cfg.last_channel, cfg.classes)
    return g.build("mobilenetv2", [("input", ("N", 3, cfg.image, cfg.image))], [("logits", logits, ("N", cfg.classes))])
