"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from sparsa.errors import ConfigError
from sparsa.eval import evaluate_run
from sparsa.types import Hit, Qrels, Run


def test_metrics_match_hand_computed_values():
    qrels = Qrels({"q1": {"d1": 1, "d3": 2}, "q2": {"d9": 1}})
    run = Run({"q1": [Hit("d1", 3), Hit("d2", 2), Hit("d3", 1)], "q2": [Hit("d8", 2), Hit("d9", 1)]})
    result = evaluate_run(run, qrels)
    # trec_eval's nDCG (which ir_measures follows) uses the grade itself as the gain.
    # q1: DCG = 1/log2(2) + 2/log2(4) = 2; ideal = 2/log2(2) + 1/log2(3)
    ndcg_q1 = 2 / (2 + 1 / math.log2(3))
    ndcg_q2 = (1 / math.log2(3)) / 1
    assert result.per_query["q1"]["nDCG@10"] == pytest.approx(ndcg_q1)
    assert result.aggregate["nDCG@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2)
    assert result.aggregate["MRR@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert result.aggregate["MAP"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 2) / 2)
    assert result.num_queries == 2


def test_judged_query_missing_from_run_scores_zero():
    qrels = Qrels({"q1": {"d1": 1}, "q2": {"d2": 1}})
    result = evaluate_run(Run({"q1": [Hit("d1", 1.0)]}), qrels, ["nDCG@10"])
    assert result.per_query["q2"]["nDCG@10"] == 0.0
    assert result.aggregate["nDCG@10"] == pytest.approx(0.5)


def test_unknown_measure_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown measure 'nDCG@ten'"):
        evaluate_run(Run({}), Qrels({"q": {"d": 1}}), ["nDCG@ten"])
