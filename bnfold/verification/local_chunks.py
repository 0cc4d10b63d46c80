"""Local checks in pieces, so that the local results alive at a time stay a fraction of one model's worth.

One :class:`~bnfold.verification.local_check.LocalCheck` model returns, for every site, its recomputed
output and the spread of its linear layer: about two models' worth of activations, beside the reference's
captured values. Sites are independent (each reads the reference's values, none another site's result),
so splitting them costs no recomputation, only one small session per piece. At the first sample the sites
are grouped in graph order into pieces whose outputs hold at most a quarter of all of them (and at least
``MIN_PIECE_BYTES``, so a small model stays one piece); each piece is judged and its results dropped before
the next one runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from bnfold.verification.bound import LocalJudgement
from bnfold.verification.local_check import LocalCheck
from bnfold.verification.local_sites import Site
from bnfold.verification.ref_path import ReferenceWeights

PIECES = 4  # the local results alive at a time: about 1/PIECES of what one local model would return
MIN_PIECE_BYTES = 32 << 20


class PiecewiseLocalCheck:
    """A LocalCheck of *sites* run as a few independent pieces (same capture, same verdicts)."""

    def __init__(self, sites: Sequence[Site], candidate: onnx.ModelProto, provider: str = "cpu",
                 external_folder: str | None = None,
                 reference: tuple[onnx.GraphProto, ReferenceWeights] | None = None) -> None:
        self.sites = list(sites)
        self._make = lambda part: LocalCheck(part, candidate, provider, external_folder, reference)
        self._whole = self._make(self.sites)  # plans every site's reference path once: what to capture
        self.pieces: list[LocalCheck] = []

    @property
    def capture(self) -> list[str]:
        return self._whole.capture

    def observe(self, values: Mapping[str, np.ndarray]) -> None:
        if not self.pieces:
            groups = split_by_bytes(self.sites, [_result_bytes(s, values) for s in self.sites], PIECES,
                                    MIN_PIECE_BYTES)
            self.pieces = [self._whole] if len(groups) == 1 else [self._make(group) for group in groups]
        for piece in self.pieces:
            piece.observe(values)

    def verdicts(self) -> dict[str, LocalJudgement | str]:
        found: dict[str, LocalJudgement | str] = {}
        for piece in self.pieces or [self._whole]:
            found.update(piece.verdicts())
        return found


def split_by_bytes(sites: Sequence[Site], sizes: Sequence[int], pieces: int, floor: int) -> list[list[Site]]:
    """*sites* in order, cut where a piece would pass ``max(sum(sizes) / pieces, floor)`` bytes (a site
    bigger than that is a piece of its own)."""
    budget = max(sum(sizes) / max(1, pieces), floor)
    groups: list[list[Site]] = [[]]
    held = 0
    for site, size in zip(sites, sizes, strict=True):
        if groups[-1] and held + size > budget:
            groups.append([])
            held = 0
        groups[-1].append(site)
        held += size
    return [g for g in groups if g]


def _result_bytes(site: Site, values: Mapping[str, np.ndarray]) -> int:
    """What the site's local results will hold: its output and its spread or magnitude twin (as big)."""
    value = values.get(site.output)
    return 2 * int(np.asarray(value).nbytes) if value is not None else 0
