"""Sample CNNs with trained-looking BatchNormalization statistics, built from onnx.helper and numpy at fixed seeds.

``build(name, large=False, seed=0)`` returns a ModelProto (opset 17, IR 8, symbolic batch ``N``); the per-family
builders (``models.resnet.build_resnet`` etc.) take explicit configs for other widths and input sizes.
"""

from __future__ import annotations

from models.registry import ALL_NAMES, DEEP_NAMES, DESCRIPTIONS, MODEL_NAMES, build
from models.summary import bn_count, input_shapes, random_inputs

__all__ = [
    "ALL_NAMES", "DEEP_NAMES", "DESCRIPTIONS", "MODEL_NAMES", "build", "bn_count", "input_shapes", "random_inputs",
]
