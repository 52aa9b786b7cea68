"""Map raw judge scores to 0-3 grades, fitted on a small labelled split.

Features come from the judge's records (``sparsa.judge.judge``): the UMBRELA expected grade and
label probabilities; the query likelihood per query token (``ql_mean``); its pointwise mutual
information with the passage, ``ql_pmi`` = log P(q | p) - log P(q | empty passage) (summed over the
query's tokens; ``ql_pmi_ens`` averages it over the judge's QL prompts); and the same PMI estimated
from the passage's side, ``pl_pmi`` = log P(p | q) - log P(p | no query) (``pl_pmi_mean`` per passage
token). Raw query likelihood is not comparable across queries (a long rare query is unlikely under
any passage); PMI removes most of that. The features also include per-query z-scores (``*_z``):
each pair's score relative to the other pairs judged *for the same query*. Those depend on which
pairs are judged together; fit and apply the calibration on pair sets chosen the same way (e.g. every
run's top 10, or whole pools).

The calibrator is ordinal: a linear score ``w . standardised(features)`` cut by three thresholds,
chosen by coordinate ascent to maximise Cohen's kappa on the labelled split, starting from the
thresholds that reproduce the labelled grade proportions. ``model`` says how ``w`` is fitted:
"least-squares" against the grades as numbers, or "ordinal-logit", the proportional-odds model's
maximum likelihood (``sparsa.judge.ordinal``), which treats the grades as ordered labels. Either gives
an expected grade in [0, 3] (``expected_grades``): the least-squares prediction clipped to the scale,
or the ordinal model's ``sum_k P(grade >= k)``; both are monotone in the score.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from sparsa.errors import ConfigError, DataFormatError
from sparsa.eval.agreement import cohen_kappa

# base feature -> the record field it needs (every base feature also has a per-query "_z" variant)
NEEDS = {"expected_grade": "expected_grade", "p3": "label_probs", "ql_mean": "ql_logprob",
         "ql_pmi": "ql_prior_logprob", "ql_pmi_ens": "ql_prior_logprob", "pl_pmi": "pl_prior_logprob",
         "pl_pmi_mean": "pl_prior_logprob"}
FEATURES = tuple(f + z for f in NEEDS for z in ("", "_z"))
# The default set, where the records allow: the PMI features (ql_mean only for records without the
# QL prior) and the UMBRELA ones. On TREC DL 2019 (bench/results/judge.json) the UMBRELA features of
# SmolLM2-135M carry no signal, and ranking or logistic models did no better than this linear one.
CalibratorModel = Literal["least-squares", "ordinal-logit"]
CALIBRATOR_MODELS: tuple[str, ...] = get_args(CalibratorModel)
DEFAULT_FEATURES = ("ql_pmi_ens", "ql_pmi_ens_z", "pl_pmi", "pl_pmi_z", "pl_pmi_mean", "pl_pmi_mean_z",
                    "expected_grade", "p3", "expected_grade_z")


def _raw(record: Mapping, name: str) -> float:
    if name == "expected_grade":
        return float(record["expected_grade"])
    if name == "p3":
        return float(record["label_probs"][3])
    if name == "ql_mean":
        return float(record["ql_logprob"]) / max(int(record["ql_tokens"]), 1)
    if name == "ql_pmi":
        return float(record["ql_logprob"]) - float(record["ql_prior_logprob"])
    if name == "ql_pmi_ens":  # the mean over the judge's QL prompts (one prompt: ql_pmi)
        scores = record.get("ql_logprobs", [record["ql_logprob"]])
        priors = record.get("ql_prior_logprobs", [record["ql_prior_logprob"]])
        return float(np.mean(np.subtract(scores, priors)))
    if name == "pl_pmi":
        return float(record["pl_logprob"]) - float(record["pl_prior_logprob"])
    if name == "pl_pmi_mean":
        return _raw(record, "pl_pmi") / max(int(record["pl_tokens"]), 1)
    raise ConfigError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")


def available_features(records: Sequence[Mapping]) -> tuple[str, ...]:
    """The default features every record can give (each scorer's need its fields); records with query
    likelihood but no prior (older checkpoints) fall back to ``ql_mean``."""
    def usable(name: str) -> bool:
        return all(NEEDS[name.removesuffix("_z")] in r for r in records)

    chosen = [f for f in DEFAULT_FEATURES if usable(f)]
    if not usable("ql_pmi") and usable("ql_mean"):
        chosen += ["ql_mean", "ql_mean_z"]
    if not chosen:
        raise ConfigError("the records hold no judge scores to calibrate")
    return tuple(chosen)


def feature_matrix(records: Sequence[Mapping], names: Sequence[str]) -> np.ndarray:
    """``float64[n, len(names)]``; names ending in ``_z`` are z-scored within each query's records."""
    out = np.zeros((len(records), len(names)))
    qids = np.array([r["qid"] for r in records])
    for col, name in enumerate(names):
        base = name.removesuffix("_z")
        if base not in NEEDS:
            raise ConfigError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
        try:
            values = np.array([_raw(r, base) for r in records])
        except KeyError as exc:
            raise ConfigError(f"feature {name!r} needs {exc.args[0]!r}, which these records lack "
                              "(was that scorer run?)") from None
        out[:, col] = per_query_z(values, qids) if name.endswith("_z") else values
    return out


def per_query_z(values: np.ndarray, qids: np.ndarray) -> np.ndarray:
    """``values`` z-scored within each query's rows (a query whose values are all equal: centred only)."""
    out = np.asarray(values, dtype=np.float64).copy()
    for qid in np.unique(qids):
        rows = qids == qid
        spread = out[rows].std()
        out[rows] = (out[rows] - out[rows].mean()) / (spread if spread > 0 else 1.0)
    return out


def cut(scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Grades 0..len(thresholds): how many thresholds each score reaches."""
    return np.searchsorted(np.asarray(thresholds), np.asarray(scores), side="right")


def fit_thresholds(scores: np.ndarray, grades: np.ndarray, levels: int = 4, rounds: int = 4) -> np.ndarray:
    """Increasing thresholds on ``scores`` maximising Cohen's kappa against ``grades`` (0..levels-1)."""
    scores, grades = np.asarray(scores, dtype=np.float64), np.asarray(grades)
    shares = np.cumsum(np.bincount(grades, minlength=levels))[:-1] / len(grades)
    thresholds = np.quantile(scores, shares)  # start: the labelled grade proportions
    candidates = np.unique(np.quantile(scores, np.linspace(0, 1, 201)))
    labels = tuple(range(levels))

    def kappa(t: np.ndarray) -> float:
        return cohen_kappa(grades, cut(scores, t), labels)

    best = kappa(thresholds)
    for _ in range(rounds):
        improved = False
        for i in range(levels - 1):
            low = thresholds[i - 1] if i > 0 else -np.inf
            high = thresholds[i + 1] if i < levels - 2 else np.inf
            for value in candidates[(candidates >= low) & (candidates <= high)]:
                trial = thresholds.copy()
                trial[i] = value
                score = kappa(trial)
                if score > best + 1e-12:
                    best, thresholds, improved = score, trial, True
        if not improved:
            break
    return thresholds


@dataclass(frozen=True, slots=True)
class GradeCalibrator:
    """``grade = cut(((features - mean) / std) @ weights, thresholds)``; ``intercepts``: the mean fit
    grade ("least-squares") or the three cutpoints ("ordinal-logit"), for ``expected_grades``."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: tuple[float, ...]
    thresholds: tuple[float, ...]
    fitted_on: dict
    model: CalibratorModel = "least-squares"
    intercepts: tuple[float, ...] = ()  # empty in files saved before expected grades existed

    @classmethod
    def fit(cls, records: Sequence[Mapping], grades: Sequence[int], features: Sequence[str] | None = None,
            ridge: float = 1e-3, model: CalibratorModel = "least-squares") -> GradeCalibrator:
        """Fit on labelled records; ``features`` None: every feature the records can give."""
        if len(records) != len(grades) or len(records) < 8:
            raise ConfigError("calibration needs >= 8 labelled pairs with one grade "
                              f"each, got {len(records)}")
        features = tuple(features) if features is not None else available_features(records)
        calibrator = cls.fit_matrix(feature_matrix(records, features), grades, features, ridge, model)
        queries = sorted({str(r["qid"]) for r in records})
        return replace(calibrator, fitted_on={"pairs": len(grades), "queries": queries,
                                              **calibrator.fitted_on})

    @classmethod
    def fit_matrix(cls, x: np.ndarray, grades: Sequence[int], features: Sequence[str], ridge: float = 1e-3,
                   model: CalibratorModel = "least-squares") -> GradeCalibrator:
        """``fit`` on a ready ``float[n, len(features)]`` matrix (features computed
        elsewhere, e.g. probes)."""
        x, grades = np.asarray(x, dtype=np.float64), np.asarray(grades)
        if x.shape != (len(grades), len(features)) or len(grades) < 8:
            raise ConfigError(f"calibration needs >= 8 labelled pairs with one grade each and a column per "
                              f"feature, got {x.shape} features for {len(grades)} grades")
        if model not in CALIBRATOR_MODELS:
            raise ConfigError(f"calibrator model {model!r}: expected one of {', '.join(CALIBRATOR_MODELS)}")
        mean, std = x.mean(0), np.where(x.std(0) > 0, x.std(0), 1.0)
        z = (x - mean) / std
        if model == "ordinal-logit":
            from sparsa.judge.ordinal import fit_proportional_odds

            weights, intercepts = fit_proportional_odds(z, grades, ridge=ridge)
        else:
            weights = np.linalg.solve(z.T @ z + ridge * len(z) * np.eye(z.shape[1]),
                                      z.T @ (grades - grades.mean()))
            intercepts = np.array([grades.mean()])
        scores = z @ weights
        thresholds = fit_thresholds(scores, grades)
        fitted_on = {"kappa_on_fit_pairs": round(cohen_kappa(grades, cut(scores, thresholds)), 4)}
        return cls(tuple(features), tuple(mean.tolist()), tuple(std.tolist()), tuple(weights.tolist()),
                   tuple(thresholds.tolist()), fitted_on, model, tuple(intercepts.tolist()))

    def scores(self, records: Sequence[Mapping]) -> np.ndarray:
        return self.matrix_scores(feature_matrix(records, self.features))

    def matrix_scores(self, x: np.ndarray) -> np.ndarray:
        return (((np.asarray(x, dtype=np.float64) - np.array(self.mean)) / np.array(self.std))
                @ np.array(self.weights))

    def predict(self, records: Sequence[Mapping]) -> np.ndarray:
        """``int64[n]`` grades 0-3."""
        return cut(self.scores(records), self.thresholds).astype(np.int64)

    def expected_grades(self, records: Sequence[Mapping]) -> np.ndarray:
        """``float64[n]`` in [0, 3], increasing in ``scores``: a continuous grade without the thresholds'
        quantisation (for expected-gain qrels, ``expected_gain_qrels``)."""
        if not self.intercepts:
            raise ConfigError("this calibration was saved without intercepts; refit it "
                              "to get expected grades")
        scores = self.scores(records)
        if self.model == "ordinal-logit":
            from sparsa.judge.ordinal import expected_grade

            return expected_grade(scores, np.array(self.intercepts))
        return np.clip(scores + self.intercepts[0], 0.0, len(self.thresholds))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> GradeCalibrator:
        try:
            raw = json.loads(Path(path).read_text())
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise DataFormatError(path, f"not a grade calibration file ({exc})") from None


GAIN_SCALE = 100  # expected grade 0.00-3.00 -> integer gain 0-300 (TREC qrels hold integers)


def expected_gains(expected: np.ndarray, scale: int = GAIN_SCALE) -> np.ndarray:
    """``int64[n]``: ``round(scale * expected grade)``, for qrels scored by nDCG with linear gains, which is
    unchanged when every gain is multiplied by one constant. Binary measures (AP, RR, their ``rel=2``
    variants) read any gain >= their threshold as relevant, so these qrels are not for them."""
    return np.rint(np.asarray(expected, dtype=np.float64) * scale).astype(np.int64)


def argmax_grades(records: Sequence[Mapping]) -> np.ndarray:
    """Uncalibrated grades: the judge's most probable label (needs the UMBRELA scorer)."""
    try:
        return np.array([int(np.argmax(r["label_probs"])) for r in records], dtype=np.int64)
    except KeyError:
        raise ConfigError("uncalibrated grades need the UMBRELA scorer's label_probs; "
                          "pass a calibration or fit one") from None
