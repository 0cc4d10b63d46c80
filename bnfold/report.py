"""Base for every report: frozen dataclasses that turn into clean JSON.

numpy scalars become Python numbers, enums their values, tuples lists, and
non-finite floats the strings "nan" / "inf" / "-inf" so the JSON is standard.
"""

from __future__ import annotations

import dataclasses
import json
import math
from enum import Enum
from pathlib import PurePath
from typing import Any

import numpy as np

SCHEMA_VERSION = 1


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


class ReportMixin:
    """Adds ``to_dict`` / ``to_json`` to a frozen dataclass."""

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)
