"""Small models written to disk for the CLI convention tests (one file, or with an external data file)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from tests.builders import GraphBuilder


def conv_bn_model(seed: int = 3) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv -> BN -> Relu -> Conv -> BN -> y: two folds, runs in milliseconds."""
    b = GraphBuilder(seed=seed)
    x = b.input("x", [1, 3, 8, 8])
    h = b.node("Relu", [b.bn(b.conv(x, 4))])
    b.channels[h] = 4
    b.output(b.bn(b.conv(h, 6)), shape=[1, 6, 6, 6])
    return b.build()


def dynamic_model() -> onnx.ModelProto:
    """Like conv_bn_model, with a symbolic batch and spatial size (needs --input-shape or a guess)."""
    b = GraphBuilder(seed=5)
    x = b.input("x", ["N", 3, "H", "W"])
    b.output(b.bn(b.conv(x, 4)), shape=["N", 4, "H2", "W2"])
    return b.build()


def wide_model() -> onnx.ModelProto:
    """Conv 16->16 and BN: 9 KiB of weights, over bnfold's external data threshold (1 KiB per tensor)."""
    b = GraphBuilder(seed=1)
    b.output(b.bn(b.conv(b.input("x", [1, 16, 8, 8]), 16)), shape=[1, 16, 6, 6])
    return b.build()


def save_single(folder: Path, name: str = "m.onnx", model: onnx.ModelProto | None = None) -> Path:
    path = folder / name
    onnx.save(model or conv_bn_model(), path)
    return path


def save_external(folder: Path, name: str = "m.onnx", data: str | None = None,
                  model: onnx.ModelProto | None = None) -> tuple[Path, Path]:
    """The model with every initializer in one external data file (default ``<name>.data``)."""
    path = folder / name
    location = data or f"{name}.data"
    onnx.save_model(model or conv_bn_model(), path, save_as_external_data=True, location=location, size_threshold=0)
    return path, folder / location


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under *folder* with its digest: equal snapshots mean nothing was written or changed."""
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}
