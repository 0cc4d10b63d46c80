"""Local checks run in pieces: same verdicts as one piece, at most a fraction of the results alive."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bnfold.verification.local_chunks as chunks
from bnfold import optimize
from bnfold.verification.local_sites import Site
from bnfold.verification.verifier import verify
from tests.verification.deep_models import bn_names, deep_chain, hand_fold_faulty


@given(st.lists(st.integers(0, 1000), max_size=40), st.integers(1, 8), st.integers(0, 500))
def test_pieces_keep_every_site_in_order_within_the_budget(sizes, pieces, floor):
    sites = [Site(f"t{i}", []) for i in range(len(sizes))]
    groups = chunks.split_by_bytes(sites, sizes, pieces, floor)
    assert [s for g in groups for s in g] == sites
    budget = max(sum(sizes) / pieces, floor)
    by_name = dict(zip((s.output for s in sites), sizes, strict=True))
    for group in groups:
        held = sum(by_name[s.output] for s in group)
        assert held <= budget or len(group) == 1
    for before, after in zip(groups, groups[1:], strict=False):  # a cut is made only where the next site would not fit
        assert sum(by_name[s.output] for s in before) + by_name[after[0].output] > budget


@pytest.fixture(scope="module")
def chain():
    return deep_chain(12)


def _verdicts(report):
    return {t.name: (t.verdict, t.local_error_vs_tolerance) for t in report.outputs + report.tensors}


def test_many_pieces_judge_like_one(chain, monkeypatch):
    folded = optimize(chain, verify=False).model
    broken = hand_fold_faulty(chain, bn_names(chain)[5], "scale_1pct")
    whole = [verify(chain, m, per_layer=True) for m in (folded, broken)]
    monkeypatch.setattr(chunks, "MIN_PIECE_BYTES", 0)
    monkeypatch.setattr(chunks, "PIECES", 5)
    pieces = [verify(chain, m, per_layer=True) for m in (folded, broken)]
    assert whole[0].passed and pieces[0].passed
    assert not pieces[1].passed and pieces[1].first_divergence == whole[1].first_divergence
    assert [_verdicts(a) == _verdicts(b) for a, b in zip(whole, pieces, strict=True)] == [True, True]


def test_a_small_model_is_one_piece_and_a_big_one_several(chain, monkeypatch):
    seen: list[int] = []
    original = chunks.split_by_bytes
    monkeypatch.setattr(chunks, "split_by_bytes", lambda *a: seen.append(len(original(*a))) or original(*a))
    folded = optimize(chain, verify=False).model
    verify(chain, folded, per_layer=True)
    monkeypatch.setattr(chunks, "MIN_PIECE_BYTES", 0)
    verify(chain, folded, per_layer=True)
    assert seen[0] == 1 and chunks.PIECES <= seen[1] <= 2 * chunks.PIECES  # each piece <= 1/PIECES of all
