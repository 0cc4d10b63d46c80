"""Deep networks for verification at depth: ResNet-101, DenseNet-201 and a 4-level 3-D U-Net, fp32 and fp16.

Depth is what these exist for: fifty-plus folded layers accumulate float rounding that no single fold caused, and
a checker must tell that drift from a fault in one fold. Widths and inputs are small by default so onnxruntime runs
each in well under a second on two cores; ``large`` gives the published widths.
"""

from __future__ import annotations

import onnx

from models.densenet import DenseNetConfig, build_densenet
from models.fp16 import to_float16_keep_io
from models.resnet import ResNetConfig, build_resnet
from models.unet import UNetConfig, build_unet

RESNET101_BLOCKS = (3, 4, 23, 3)
DENSENET201_BLOCKS = (6, 12, 48, 32)

RESNET101_SMALL = ResNetConfig(RESNET101_BLOCKS, bottleneck=True, width=8, classes=10, image=64)
RESNET101_LARGE = ResNetConfig(RESNET101_BLOCKS, bottleneck=True)
DENSENET201_SMALL = DenseNetConfig(DENSENET201_BLOCKS, growth=8, init_features=16, bn_size=2, classes=10, image=64)
DENSENET201_LARGE = DenseNetConfig(DENSENET201_BLOCKS)
UNET3D_DEEP_SMALL = UNetConfig(spatial=3, in_channels=1, classes=3, base=4, depth=4, size=32)
UNET3D_DEEP_LARGE = UNetConfig(spatial=3, in_channels=1, classes=3, base=16, depth=4, size=64)


def resnet101(seed: int, *, large: bool = False) -> onnx.ModelProto:
    return build_resnet(RESNET101_LARGE if large else RESNET101_SMALL, seed)


def densenet201(seed: int, *, large: bool = False) -> onnx.ModelProto:
    model = build_densenet(DENSENET201_LARGE if large else DENSENET201_SMALL, seed)
    model.graph.name = "densenet201"
    return model


def unet3d_deep(seed: int, *, large: bool = False) -> onnx.ModelProto:
    model = build_unet(UNET3D_DEEP_LARGE if large else UNET3D_DEEP_SMALL, seed)
    model.graph.name = "unet3d_deep"
    return model


def fp16io(builder):
    """The float16-compute, float32-I/O variant of a float32 builder."""

    def build(seed: int, *, large: bool = False) -> onnx.ModelProto:
        return to_float16_keep_io(builder(seed, large=large))

    return build
