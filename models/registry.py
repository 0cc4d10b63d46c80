"""The named sample models: one entry per name with a small (tests) and a large (benchmarks) configuration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import onnx

from models import deep
from models.densenet import DenseNetConfig, build_densenet
from models.mobilenet import MobileNetV2Config, build_mobilenetv2
from models.plain import Bn1dClassifierConfig, VggConfig, build_classifier_bn1d, build_vgg_bn
from models.resnet import ResNetConfig, build_resnet
from models.unet import UNetConfig, build_unet

Builder = Callable[[int], onnx.ModelProto]

_R18, _R50 = (2, 2, 2, 2), (3, 4, 6, 3)
_UNET2D = {"spatial": 2, "in_channels": 3, "classes": 2, "grouped_up": True}
_UNET3D = {"spatial": 3, "in_channels": 1, "classes": 3, "conv_bias": True}


@dataclass(frozen=True)
class ModelEntry:
    description: str
    small: Builder
    large: Builder


_ENTRIES: dict[str, ModelEntry] = {
    "resnet18": ModelEntry(
        "Basic residual blocks: bias-free Conv -> BN -> Relu, projection shortcuts (Conv -> BN), Add -> Relu.",
        partial(build_resnet, ResNetConfig(_R18, bottleneck=False, width=16, classes=10, image=64)),
        partial(build_resnet, ResNetConfig(_R18, bottleneck=False)),
    ),
    "resnet50": ModelEntry(
        "Bottleneck blocks (1x1 -> 3x3 -> 1x1, 4x expansion); large is full ImageNet ResNet-50 (~25.6M params).",
        partial(build_resnet, ResNetConfig(_R50, bottleneck=True, width=8, classes=10, image=64)),
        partial(build_resnet, ResNetConfig(_R50, bottleneck=True)),
    ),
    "mobilenetv2": ModelEntry(
        "Depthwise 3x3 Conv (group = channels) -> BN -> Clip(0, 6); linear 1x1 projections; inverted residual Adds.",
        partial(build_mobilenetv2, MobileNetV2Config(width_mult=0.25, last_channel=128, classes=10, image=64)),
        partial(build_mobilenetv2, MobileNetV2Config()),
    ),
    "vgg_bn": ModelEntry(
        "VGG-11-BN trunk: Conv with bias -> BN -> Relu, MaxPool; compact GAP -> Gemm -> Relu -> Gemm head.",
        partial(build_vgg_bn, VggConfig(width_div=8, hidden=64, classes=10, image=32)),
        partial(build_vgg_bn, VggConfig()),
    ),
    "densenet_block": ModelEntry(
        "Dense blocks: BN -> Relu on Concat outputs and after pooling (no Conv before the BN); Convs without BN.",
        partial(build_densenet, DenseNetConfig(blocks=(3, 3), growth=8, init_features=16, classes=10, image=64)),
        partial(build_densenet, DenseNetConfig()),
    ),
    "unet2d": ModelEntry(
        "2-D segmentation U-Net: ConvTranspose -> BN -> Relu upsampling (deepest one grouped, group=2), skip Concats.",
        partial(build_unet, UNetConfig(**_UNET2D, base=8, depth=3, size=64)),
        partial(build_unet, UNetConfig(**_UNET2D, base=64, depth=4, size=256)),
    ),
    "unet3d": ModelEntry(
        "3-D U-Net on volumes: Conv3d with bias -> BN, ConvTranspose3d -> BN, 5-D tensors throughout.",
        partial(build_unet, UNetConfig(**_UNET3D, base=4, depth=2, size=16)),
        partial(build_unet, UNetConfig(**_UNET3D, base=16, depth=3, size=64)),
    ),
    "classifier_bn1d": ModelEntry(
        "BatchNorm1d on [N, C] after Gemm (with and without Gemm bias) in an MLP head on a small conv trunk.",
        partial(build_classifier_bn1d, Bn1dClassifierConfig()),
        partial(build_classifier_bn1d, Bn1dClassifierConfig(width=64, hidden=1024, classes=1000, image=224)),
    ),
    "resnet18_fp16": ModelEntry(
        "ResNet-18 with every float tensor in float16 (inputs, outputs, weights, BN statistics).",
        partial(build_resnet, ResNetConfig(_R18, bottleneck=False, width=16, classes=10, image=64, dtype=np.float16)),
        partial(build_resnet, ResNetConfig(_R18, bottleneck=False, dtype=np.float16)),
    ),
}

# Deep builders, each with a float16-compute / float32-I/O twin; kept out of MODEL_NAMES so that suites iterating
# over the classic models (verified optimize on each) keep their cost; ALL_NAMES has both.
_DEEP = {
    "resnet101": ("ResNet-101 depth (3/4/23/3 bottleneck blocks, 104 Conv -> BN): rounding accumulates over depth.",
                  deep.resnet101),
    "densenet201": ("DenseNet-201 depth (6/12/48/32 dense layers): BN -> Relu -> Conv on Concats, Conv1x1 -> BN.",
                    deep.densenet201),
    "unet3d_deep": ("4-level 3-D U-Net: bias-free Conv3d -> BN, ConvTranspose3d -> BN, skip Concats on volumes.",
                    deep.unet3d_deep),
}
for _name, (_text, _builder) in _DEEP.items():
    _ENTRIES[_name] = ModelEntry(_text, partial(_builder, large=False), partial(_builder, large=True))
    _half = deep.fp16io(_builder)
    _ENTRIES[f"{_name}_fp16io"] = ModelEntry(
        f"{_name} in float16 compute with float32 inputs/outputs (Cast at both ends, as onnxconverter-common).",
        partial(_half, large=False), partial(_half, large=True))
DEEP_NAMES: tuple[str, ...] = tuple(n for base in _DEEP for n in (base, f"{base}_fp16io"))

# The classic sample models (what other test modules iterate over); the deep ones are built by name or via ALL_NAMES.
MODEL_NAMES: tuple[str, ...] = tuple(n for n in _ENTRIES if n not in DEEP_NAMES)
ALL_NAMES: tuple[str, ...] = MODEL_NAMES + DEEP_NAMES
DESCRIPTIONS: dict[str, str] = {name: entry.description for name, entry in _ENTRIES.items()}


def build(name: str, *, large: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Build sample model ``name``; equal (name, large, seed) give byte-identical models."""
    entry = _ENTRIES.get(name)
    if entry is None:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(ALL_NAMES)}")
    return (entry.large if large else entry.small)(seed)
