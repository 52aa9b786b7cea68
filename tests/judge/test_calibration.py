"""Grade calibration on toy records whose scores are known."""

from __future__ import annotations

import numpy as np
import pytest

from sparsa.errors import ConfigError, DataFormatError
from sparsa.judge.calibration import GradeCalibrator, available_features, cut, feature_matrix, fit_thresholds


def _records(grades, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for i, g in enumerate(grades):
        p = np.full(4, 0.1)
        p[g] = 0.7
        records.append({"qid": f"q{i % 3}", "docid": f"d{i}", "label_probs": p.tolist(),
                        "expected_grade": float(p @ np.arange(4)) + noise * rng.normal(),
                        "ql_logprob": -20.0 + 4 * g + noise * rng.normal(), "ql_tokens": 4})
    return records


def test_cut_and_threshold_fit_recover_separable_grades():
    assert cut(np.array([-1.0, 0.5, 1.5, 9.0]), [0.0, 1.0, 2.0]).tolist() == [0, 1, 2, 3]
    grades = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    scores = grades * 10.0 + np.linspace(0, 1, len(grades))  # separable, grade by grade
    thresholds = fit_thresholds(scores, grades)
    assert np.all(np.diff(thresholds) > 0)
    assert cut(scores, thresholds).tolist() == grades.tolist()


def test_calibrator_learns_the_direction_and_round_trips(tmp_path):
    grades = [0, 1, 2, 3] * 6
    calibrator = GradeCalibrator.fit(_records(grades, noise=0.01), grades, features=("ql_mean",))
    assert calibrator.weights[0] > 0 and calibrator.fitted_on["kappa_on_fit_pairs"] == pytest.approx(1.0)
    assert calibrator.predict(_records(grades, noise=0.01, seed=1)).tolist() == grades
    # A feature that falls with the grade gets a negative weight and still separates them.
    flipped = [{**r, "ql_logprob": -r["ql_logprob"]} for r in _records(grades)]
    assert GradeCalibrator.fit(flipped, grades, features=("ql_mean",)).predict(flipped).tolist() == grades
    calibrator.save(tmp_path / "cal.json")
    assert GradeCalibrator.load(tmp_path / "cal.json") == calibrator
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataFormatError, match="bad.json"):
        GradeCalibrator.load(tmp_path / "bad.json")


def test_fit_matrix_is_fit_on_the_records_feature_matrix():
    grades = [0, 1, 2, 3] * 6
    records, features = _records(grades, noise=0.3), ("ql_mean", "expected_grade_z")
    from_records = GradeCalibrator.fit(records, grades, features=features)
    from_matrix = GradeCalibrator.fit_matrix(feature_matrix(records, features), grades, features)
    assert from_matrix.weights == from_records.weights and from_matrix.thresholds == from_records.thresholds
    assert from_records.fitted_on["pairs"] == 24 and "pairs" not in from_matrix.fitted_on
    assert (from_matrix.matrix_scores(feature_matrix(records, features)).tolist()
            == from_records.scores(records).tolist())


def test_per_query_z_features_and_missing_scorer():
    records = [{"qid": q, "ql_logprob": v, "ql_tokens": 1}
               for q, v in (("a", 1), ("a", 3), ("b", 10), ("b", 30))]
    z = feature_matrix(records, ["ql_mean_z"])[:, 0]
    assert z.tolist() == pytest.approx([-1, 1, -1, 1])
    with pytest.raises(ConfigError, match="expected_grade"):
        feature_matrix(records, ["expected_grade"])
    with pytest.raises(ConfigError, match=">= 8"):
        GradeCalibrator.fit(records, [0, 1, 2, 3], features=("ql_mean",))


def test_default_features_follow_the_scorers_that_ran():
    grades = [0, 1, 2, 3] * 3
    ql_only = [{k: v for k, v in r.items() if k.startswith("ql") or k in ("qid", "docid")}
               for r in _records(grades)]
    assert GradeCalibrator.fit(ql_only, grades).features == ("ql_mean", "ql_mean_z")
    assert len(GradeCalibrator.fit(_records(grades), grades).features) == 5


def test_pmi_features_and_their_defaults():
    record = {"qid": "a", "ql_logprob": -10.0, "ql_prior_logprob": -16.0, "ql_tokens": 3,
              "ql_logprobs": [-10.0, -12.0], "ql_prior_logprobs": [-16.0, -14.0],
              "pl_logprob": -100.0, "pl_prior_logprob": -120.0, "pl_tokens": 40}
    row = feature_matrix([record], ["ql_pmi", "ql_pmi_ens", "pl_pmi", "pl_pmi_mean", "ql_mean"])[0]
    assert row.tolist() == pytest.approx([6.0, 4.0, 20.0, 0.5, -10 / 3])  # ens: mean of 6 and 2
    single = {k: v for k, v in record.items() if not k.endswith("s")}  # one QL prompt: ens is plain PMI
    assert feature_matrix([single], ["ql_pmi_ens"])[0, 0] == pytest.approx(6.0)
    assert available_features([record]) == ("ql_pmi_ens", "ql_pmi_ens_z", "pl_pmi", "pl_pmi_z", "pl_pmi_mean",
                                            "pl_pmi_mean_z")
    no_prior = {"qid": "a", "ql_logprob": -10.0, "ql_tokens": 3}  # an older checkpoint: QL without its prior
    assert available_features([no_prior]) == ("ql_mean", "ql_mean_z")
    with pytest.raises(ConfigError, match="ql_prior_logprob"):
        feature_matrix([no_prior], ["ql_pmi"])
    with pytest.raises(ConfigError, match="unknown feature 'ql_vibes_z'"):
        feature_matrix([record], ["ql_vibes_z"])
    with pytest.raises(ConfigError, match="no judge scores"):
        available_features([{"qid": "a"}])
