"""The two models a benchmark compares: original vs folded (in memory), or two files given by the user.

Both sides are handed to onnxruntime the same way (bytes, each model serialised once), so session
creation times compare like with like: neither side pays for a file read the other side skips. Models
with external data are the exception: they go to onnxruntime as paths so their data files are found (a
folded one is saved with its own data file in a temporary folder for as long as the benchmark runs).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from bnfold.errors import ModelLoadError

ModelInput = onnx.ModelProto | str | os.PathLike


@dataclass(frozen=True)
class Variant:
    """One side of the comparison: its label in reports, what onnxruntime loads, and its size."""

    label: str
    payload: bytes | str
    file_size_bytes: int


@dataclass(frozen=True)
class Variants:
    """Baseline and candidate, plus the model that input feeds are made from (both take the same inputs)."""

    baseline: Variant
    candidate: Variant
    feed_model: onnx.ModelProto | str
    scratch: tempfile.TemporaryDirectory | None = None  # holds a folded external-data model while it's used


def prepare_variants(model: ModelInput, compare: ModelInput | None) -> Variants:
    """Load *model* (and *compare*, or fold *model* in memory when there is nothing to compare with)."""
    base_proto, baseline = _load(model, "original" if compare is None else None)
    if compare is not None:
        _, candidate = _load(compare, None)
        if baseline.label == candidate.label:
            candidate = Variant(f"{candidate.label} (compare)", candidate.payload, candidate.file_size_bytes)
        return Variants(baseline, candidate, base_proto)
    from bnfold.optimizer import optimize

    result = optimize(base_proto, verify=False)
    if result.external_folder is not None:  # still reads the original's data files: save it beside its own
        return _folded_with_external_data(result, baseline, base_proto)
    data = _serialise(result.model)
    return Variants(baseline, Variant("folded", data, len(data)), base_proto)


def _folded_with_external_data(result, baseline: Variant, feed_model) -> Variants:
    from bnfold.io.model_file import save_model

    scratch = tempfile.TemporaryDirectory(prefix="bnfold-bench-")
    path = Path(scratch.name) / "folded.onnx"
    save_model(result.model, path, external_data=True, source_folder=result.external_folder)
    size = sum(f.stat().st_size for f in Path(scratch.name).iterdir())
    return Variants(baseline, Variant("folded", str(path), size), feed_model, scratch)


def _load(model: ModelInput, label: str | None) -> tuple[onnx.ModelProto | str, Variant]:
    """Parse once (with bnfold's checks); return what feeds/folding use and what onnxruntime loads."""
    if isinstance(model, onnx.ModelProto):
        data = _serialise(model)
        return model, Variant(label or "model", data, len(data))
    if not isinstance(model, (str, os.PathLike)):
        raise ModelLoadError(f"expected a ModelProto or a path, got {type(model).__name__}")
    from bnfold.io.external_data import check_external_data, has_external_data
    from bnfold.io.model_file import load_model

    path = Path(model)
    proto = load_model(path, load_external_data=False)
    size = path.stat().st_size
    if has_external_data(proto):
        refs = check_external_data(proto, path.absolute().parent, require_files=True)
        size += sum({ref.path: ref.path.stat().st_size for ref in refs}.values())
        return str(path), Variant(label or str(path), str(path), size)
    # the file's own bytes are the model serialised: hand them over rather than serialising it again
    return proto, Variant(label or str(path), path.read_bytes(), size)


def _serialise(model: onnx.ModelProto) -> bytes:
    try:
        return model.SerializeToString()
    except ValueError as exc:  # protobuf's 2 GiB limit
        raise ModelLoadError(f"model too large to serialise in memory ({exc}); save it with external data") from None
