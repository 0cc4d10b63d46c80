"""Shared fixtures: the corpus folder (skipped visibly where absent)."""

from __future__ import annotations

import pytest

from tests.builders import CORPUS


def corpus_models() -> list:
    return sorted(CORPUS.glob("*.onnx")) if CORPUS.is_dir() else []


@pytest.fixture
def corpus_dir():
    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus not found at {CORPUS} (optional test tier)")
    return CORPUS
