"""Base for every report: frozen dataclasses that turn into clean JSON, and the report contract.

The contract every top-level JSON report keeps (``optimize``, ``verify``, ``inspect``, ``bench``, the folder
summary and ``check``; one JSON Schema per kind in ``schemas/``):

- ``kind``: which report this is (``KINDS``); ``schema_version``: bumped when a field changes meaning or
  goes away (adding a field does not bump it); ``versions``: the bnfold, onnx and onnxruntime versions
  that produced it (onnxruntime ``null`` when it is not installed).
- numpy scalars become Python numbers, enums their values, tuples lists, paths strings.
- Non-finite floats become the strings ``"nan"``, ``"inf"`` and ``"-inf"``: the JSON stays standard (no
  bare ``NaN`` token, which strict parsers reject), and a reader tells them from numbers by their type.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from enum import Enum
from functools import lru_cache
from pathlib import PurePath
from typing import Any, ClassVar

import numpy as np

SCHEMA_VERSION = 2  # 2: every report carries kind and versions
KINDS = ("optimize", "verify", "inspect", "bench", "folder", "check")
_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")


def jsonable(value: Any) -> Any:
    """Convert *value* recursively into JSON-safe Python objects."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def onnxruntime_version() -> str | None:
    """The installed onnxruntime's version without importing it (the fold path must not pay for that)."""
    module = sys.modules.get("onnxruntime")
    if module is not None and getattr(module, "__version__", None):
        return str(module.__version__)
    return _installed_ort_version()


@lru_cache(maxsize=1)
def _installed_ort_version() -> str | None:
    from importlib import metadata

    for name in _ORT_DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict[str, str | None]:
    """What produced a report: the bnfold, onnx and onnxruntime versions."""
    import onnx

    from bnfold import __version__

    return {"bnfold": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime_version()}


def envelope(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """*body* with the contract's fields added (after its own, so its key order stays as it was)."""
    if kind not in KINDS:
        raise ValueError(f"unknown report kind {kind!r}")
    return {**body, "kind": kind, "schema_version": SCHEMA_VERSION, "versions": versions()}


class ReportMixin:
    """Adds ``to_dict`` / ``to_json`` to a frozen dataclass; a top-level report names its ``REPORT_KIND``
    and gets the contract's fields (nested parts, which leave it None, do not)."""

    REPORT_KIND: ClassVar[str | None] = None

    def to_dict(self) -> dict[str, Any]:
        body = jsonable(self)
        return body if self.REPORT_KIND is None else envelope(self.REPORT_KIND, body)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, allow_nan=False)
