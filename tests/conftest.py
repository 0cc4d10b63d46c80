"""Shared fixtures: the corpus folder (skipped visibly where absent).

The corpus is ``../shared/corpus`` beside the checkout; ``BNFOLD_CORPUS=DIR`` points the tier at another copy
(a git worktree one level deeper, a CI cache).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.builders import CORPUS


def corpus_root() -> Path:
    override = os.environ.get("BNFOLD_CORPUS")
    return Path(override) if override else CORPUS


def corpus_models() -> list:
    root = corpus_root()
    return sorted(root.glob("*.onnx")) if root.is_dir() else []


@pytest.fixture
def corpus_dir():
    root = corpus_root()
    if not root.is_dir():
        pytest.skip(f"shared corpus not found at {root} (optional test tier; BNFOLD_CORPUS=DIR sets another)")
    return root


@pytest.fixture
def exporters_dir(corpus_dir):
    folder = corpus_dir / "exporters"
    if not folder.is_dir():
        pytest.skip(f"framework exports not found at {folder} (optional test tier)")
    return folder
