"""The proportional-odds calibrator, expected grades and expected-gain qrels, against hand-worked values."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest

from sparsa.errors import ConfigError
from sparsa.eval import evaluate_run
from sparsa.judge.calibration import CALIBRATOR_MODELS, GradeCalibrator, expected_gains
from sparsa.judge.job import GAINS, grade_records
from sparsa.judge.ordinal import expected_grade, fit_proportional_odds
from sparsa.types import Hit, Qrels, Run

from .test_calibration import _records

LN3 = math.log(3)


def test_intercept_only_fit_gives_the_logits_of_the_grade_shares():
    # grades 0,0,1,1,2,2,3,3: P(g >= 1) = 3/4, P(g >= 2) = 1/2, P(g >= 3) = 1/4, so c_k = -logit(P(g >= k))
    _, cutpoints = fit_proportional_odds(np.zeros((8, 1)), np.array([0, 0, 1, 1, 2, 2, 3, 3]))
    assert cutpoints.tolist() == pytest.approx([-LN3, 0.0, LN3], abs=1e-4)


def test_expected_grade_is_the_sum_of_the_cumulative_probabilities():
    cutpoints = np.array([-LN3, 0.0, LN3])
    # s = 0: 3/4 + 1/2 + 1/4; s = ln 3: sigmoid(2 ln 3) + sigmoid(ln 3) + sigmoid(0) = 9/10 + 3/4 + 1/2
    assert expected_grade(np.array([0.0, LN3]), cutpoints).tolist() == pytest.approx([1.5, 2.15])
    assert expected_grade(np.array([-1e3, 1e3]), cutpoints).tolist() == pytest.approx([0.0, 3.0])


def test_fit_recovers_a_simulated_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2))
    latent = x @ np.array([1.5, -0.5]) + rng.logistic(size=len(x))  # P(g >= k) = sigmoid(x.w - c_k)
    weights, cutpoints = fit_proportional_odds(x, np.digitize(latent, [-1.0, 0.5, 2.0]), ridge=0.0)
    assert weights.tolist() == pytest.approx([1.5, -0.5], abs=0.1)
    assert cutpoints.tolist() == pytest.approx([-1.0, 0.5, 2.0], abs=0.15)


def test_ordinal_calibrator_grades_and_expected_grades(tmp_path):
    grades = [0, 1, 2, 3] * 6
    calibrator = GradeCalibrator.fit(_records(grades, noise=0.01), grades, features=("ql_mean",),
                                     model="ordinal-logit")
    assert calibrator.model == "ordinal-logit" and len(calibrator.intercepts) == 3
    assert calibrator.predict(_records(grades, noise=0.01, seed=1)).tolist() == grades
    expected = calibrator.expected_grades(_records(grades))
    assert np.all((expected >= 0) & (expected <= 3))
    assert np.all(np.diff(expected[:4]) > 0)  # monotone in the score: grades 0 < 1 < 2 < 3
    calibrator.save(tmp_path / "cal.json")
    assert GradeCalibrator.load(tmp_path / "cal.json") == calibrator
    with pytest.raises(ConfigError, match="calibrator model 'probit'"):
        GradeCalibrator.fit(_records(grades), grades, features=("ql_mean",), model="probit")


def test_least_squares_expected_grade_is_the_clipped_prediction(tmp_path):
    grades = [0, 1, 2, 3] * 6
    records = [{"qid": "q", "ql_logprob": float(g), "ql_tokens": 1} for g in grades]  # ql_mean = grade
    calibrator = GradeCalibrator.fit(records, grades, features=("ql_mean",))
    # z = (g - 1.5) / sqrt(1.25); w = sqrt(1.25) / (1 + ridge 0.001): prediction 1.5 + (g - 1.5) / 1.001
    assert calibrator.expected_grades(records[:4]).tolist() == pytest.approx([1.5 + (g - 1.5) / 1.001
                                                                             for g in range(4)])
    far = [{"qid": "q", "ql_logprob": v, "ql_tokens": 1} for v in (-9.0, 12.0)]
    assert calibrator.expected_grades(far).tolist() == [0.0, 3.0]
    # a file saved before intercepts existed loads with none, and cannot give expected grades
    legacy = GradeCalibrator(*(getattr(calibrator, f) for f in ("features", "mean", "std", "weights",
                                                                "thresholds", "fitted_on")))
    with pytest.raises(ConfigError, match="refit"):
        legacy.expected_grades(records)


def test_expected_gains_and_ndcg_with_them():
    assert expected_gains(np.array([0.0, 1.234, 2.9996, 3.0])).tolist() == [0, 123, 300, 300]
    run = Run({"q": [Hit("b", 3.0), Hit("a", 2.0), Hit("c", 1.0)]})
    graded, gains = Qrels({"q": {"a": 3, "b": 1, "c": 0}}), Qrels({"q": {"a": 300, "b": 100, "c": 0}})
    # linear gain (trec_eval): DCG = 1 + 3 / log2(3), ideal 3 + 1 / log2(3); scaling every gain leaves it
    hand = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    assert evaluate_run(run, graded, ["nDCG@10"]).aggregate["nDCG@10"] == pytest.approx(hand)
    assert evaluate_run(run, gains, ["nDCG@10"]).aggregate["nDCG@10"] == pytest.approx(hand)
    # The caveat: a binary measure's threshold reads gains, so grade 1 (gain 100) turns relevant at rel=2.
    two = Run({"q": [Hit("a", 2.0), Hit("b", 1.0)]})
    assert evaluate_run(two, Qrels({"q": {"a": 1, "b": 2}}), ["AP(rel=2)"]).aggregate["AP(rel=2)"] == 0.5
    assert evaluate_run(two, Qrels({"q": {"a": 100, "b": 200}}), ["AP(rel=2)"]).aggregate["AP(rel=2)"] == 1.0


def test_grade_records_writes_grades_or_expected_gains():
    grades = [0, 1, 2, 3] * 6
    rows = _records(grades, noise=0.01)
    records = {(r["qid"], r["docid"]): r for r in rows}
    human = Qrels({})
    for r, g in zip(rows, grades, strict=True):
        human.judgements.setdefault(r["qid"], {})[r["docid"]] = g
    discrete = grade_records(records, fit_queries=2, human=human, model="ordinal-logit")
    assert set(discrete.values()) <= {0, 1, 2, 3}
    fitted = grade_records(records, fit_queries=2, human=human, gains="expected-gain")
    assert all(0 <= v <= 300 for v in fitted.values()) and len(set(fitted.values())) > 4
    uncalibrated = grade_records(records, gains="expected-gain")  # UMBRELA's own expected grade
    assert uncalibrated == {p: round(100 * r["expected_grade"]) for p, r in records.items()}
    with pytest.raises(ConfigError, match="gains 'binary'"):
        grade_records(records, gains="binary")


def test_cli_offers_the_library_choices():
    from sparsa.cli.judge import judge

    hints = typing.get_type_hints(judge, include_extras=True)
    assert typing.get_args(typing.get_args(hints["calibrator"])[0]) == CALIBRATOR_MODELS
    assert typing.get_args(typing.get_args(hints["gains"])[0]) == GAINS
