"""Grade calibration on toy records whose scores are known."""

from __future__ import annotations

import numpy as np
import pytest
from sparsa.rag.calibration import GradeCalibrator, cut, feature_matrix, fit_thresholds

from sparsa.errors import ConfigError, DataFormatError


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


def test_per_query_z_features_and_missing_scorer():
    records = [{"qid": q, "ql_logprob": v, "ql_tokens": 1} for q, v in (("a", 1), ("a", 3), ("b", 10), ("b", 30))]
    z = feature_matrix(records, ["ql_mean_z"])[:, 0]
    assert z.tolist() == pytest.approx([-1, 1, -1, 1])
    with pytest.raises(ConfigError, match="expected_grade"):
        feature_matrix(records, ["expected_grade"])
    with pytest.raises(ConfigError, match=">= 8"):
        GradeCalibrator.fit(records, [0, 1, 2, 3], features=("ql_mean",))


def test_default_features_follow_the_scorers_that_ran():
    grades = [0, 1, 2, 3] * 3
    ql_only = [{k: v for k, v in r.items() if k.startswith("ql") or k in ("qid", "docid")} for r in _records(grades)]
    assert GradeCalibrator.fit(ql_only, grades).features == ("ql_mean", "ql_mean_z")
    assert len(GradeCalibrator.fit(_records(grades), grades).features) == 5
