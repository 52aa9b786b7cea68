"""Fusion maths against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from sparsa.errors import ConfigError
from sparsa.retrieval.fusion import (
    HybridRetriever,
    fuse,
    interpolate,
    normalise_scores,
    reciprocal_rank_fusion,
)
from sparsa.types import Hit, Query, Run

A = Run({"q": [Hit("a", 10.0), Hit("b", 8.0), Hit("c", 2.0)]}, name="A")
B = Run({"q": [Hit("c", 0.9), Hit("a", 0.5)], "q2": [Hit("x", 1.0)]}, name="B")


def scores(run: Run, qid: str = "q") -> dict[str, float]:
    return {h.doc_id: h.score for h in run[qid]}


def test_rrf_by_hand():
    fused = reciprocal_rank_fusion([A, B], rrf_k=60)
    got = scores(fused)
    assert got["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert got["b"] == pytest.approx(1 / 62)  # missing from B: adds nothing
    assert got["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert [h.doc_id for h in fused["q"]] == ["a", "c", "b"]
    assert scores(fused, "q2") == {"x": pytest.approx(1 / 61)}  # a query only one run has


def test_rrf_weights_depth_and_k():
    fused = reciprocal_rank_fusion([A, B], weights=[2.0, 1.0], rrf_k=0, depth=1, k=1)
    # depth 1: A contributes a (2/1), B contributes c (1/1); k=1 keeps the best
    assert fused["q"] == [Hit("a", 2.0)]


def test_minmax_and_zscore_normalisation():
    assert normalise_scores(A["q"], "minmax") == {"a": 1.0, "b": 0.75, "c": 0.0}
    mean, std = 20 / 3, math.sqrt(((10 - 20 / 3) ** 2 + (8 - 20 / 3) ** 2 + (2 - 20 / 3) ** 2) / 3)
    z = normalise_scores(A["q"], "zscore")
    assert z["a"] == pytest.approx((10 - mean) / std) and z["c"] == pytest.approx((2 - mean) / std)
    assert normalise_scores([Hit("x", 3.0)], "minmax") == {"x": 1.0}  # one hit: no span
    assert normalise_scores([Hit("x", 3.0)], "zscore") == {"x": 0.0}


def test_interpolation_by_hand():
    fused = interpolate([A, B], weights=[0.5, 1.0], normalisation="minmax")
    # A minmax: a 1, b .75, c 0; B minmax: c 1, a 0; b missing from B gets B's floor (0)
    assert scores(fused) == {"a": pytest.approx(0.5), "b": pytest.approx(0.375), "c": pytest.approx(1.0)}
    assert [h.doc_id for h in fused["q"]] == ["c", "a", "b"]
    z = interpolate([A, B], normalisation="zscore")
    zb = normalise_scores(B["q"], "zscore")  # c +1, a -1
    assert scores(z)["b"] == pytest.approx(normalise_scores(A["q"], "zscore")["b"] + min(zb.values()))


def test_bad_input_is_a_clear_error():
    with pytest.raises(ConfigError, match="2 weights for 1 runs|1 weights"):
        fuse([A], "rrf", weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="unknown fusion method"):
        fuse([A, B], "max")
    with pytest.raises(ConfigError, match=">= 0"):
        fuse([A, B], "rrf", weights=[1.0, -1.0])
    with pytest.raises(ConfigError, match="no runs"):
        fuse([], "rrf")
    with pytest.raises(ConfigError, match="normalisation"):
        fuse([A, B], "interp", normalisation="rank")


class FixedRetriever:
    """Answers every query with a fixed run: stands in for a first stage whose output we control."""

    def __init__(self, run: Run):
        self.run, self.name = run, run.name

    def search(self, queries, k=1000, show_progress=None):
        return Run({q.id: self.run[q.id][:k] for q in queries if q.id in self.run}, name=self.name)


def test_hybrid_retriever_fuses_its_retrievers():
    hybrid = HybridRetriever([FixedRetriever(A), FixedRetriever(B)], method="rrf", depth=10)
    run = hybrid.search([Query("q", "anything")], k=2)
    assert [h.doc_id for h in run["q"]] == ["a", "c"] and run.name == "rrf(A,B)"
    with pytest.raises(ConfigError):
        HybridRetriever([FixedRetriever(A)], method="nope")
