"""Agreement between judges: label agreement (Cohen's kappa, Krippendorff's alpha, confusion
matrix) and rank correlation between system orderings (Kendall's tau-b, Spearman's rho).

The statistics come from well-kept libraries (scikit-learn, ``krippendorff``, SciPy), imported on first
use so ``import sparsa.eval`` stays light; ``tests/eval/test_agreement.py`` checks each against values
computed by hand. What this module adds is the input checks, the TREC DL conventions (grades 0-3, binary
relevance at grade >= 2) and one decision the libraries leave open:

- Cohen's kappa when both judges used one and the same label throughout: chance agreement is then
  perfect and the formula divides by zero; we report 1.0 when they agree everywhere, else 0.0.
- Krippendorff's alpha ``level``: "nominal", "ordinal" (Krippendorff's rank-based metric, the right
  one for 0-3 grades) or "interval".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sparsa.errors import ConfigError, require

GRADES = (0, 1, 2, 3)
KAPPA_WEIGHTS = (None, "linear", "quadratic")
ALPHA_LEVELS = ("nominal", "ordinal", "interval")


def _labels(a: Sequence[int], b: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ConfigError(f"need two equally long non-empty label lists, got shapes {a.shape} and {b.shape}")
    return a, b


def _metrics():
    return require("sklearn.metrics", "models")


def confusion_matrix(truth: Sequence[int], predicted: Sequence[int],
                     labels: Sequence[int] = GRADES) -> np.ndarray:
    """``int64[L, L]``: row = ``truth`` label, column = ``predicted`` label, in ``labels`` order."""
    truth, predicted = _labels(truth, predicted)
    unknown = (set(truth.tolist()) | set(predicted.tolist())) - set(labels)
    if unknown:  # scikit-learn would drop them silently
        raise ConfigError(f"labels {sorted(unknown)} are not in {list(labels)}")
    return _metrics().confusion_matrix(truth, predicted, labels=list(labels)).astype(np.int64)


def cohen_kappa(a: Sequence[int], b: Sequence[int], labels: Sequence[int] = GRADES,
                weights: str | None = None) -> float:
    """Cohen's kappa of two label lists; ``weights`` None (unweighted), "linear" or "quadratic"."""
    if weights not in KAPPA_WEIGHTS:
        raise ConfigError(f"weights {weights!r}: expected None, 'linear' or 'quadratic'")
    matrix = confusion_matrix(a, b, labels)  # checks the labels
    if np.count_nonzero(matrix.sum(0)) == 1 and np.count_nonzero(matrix.sum(1)) == 1:
        return 1.0 if np.trace(matrix) == matrix.sum() else 0.0  # one label each: see the module docstring
    a, b = _labels(a, b)
    return float(_metrics().cohen_kappa_score(a, b, labels=list(labels), weights=weights))


def binarize(grades: Sequence[int], threshold: int = 2) -> np.ndarray:
    """TREC DL binary relevance: grade >= ``threshold`` (2 for DL passages) is relevant."""
    return (np.asarray(grades) >= threshold).astype(np.int64)


def krippendorff_alpha(data: np.ndarray | Sequence[Sequence[float]], level: str = "ordinal") -> float:
    """Krippendorff's alpha of ``data[coders, units]`` (NaN = missing); ``level``:
    nominal/ordinal/interval."""
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] < 2:
        raise ConfigError(f"need data[coders >= 2, units], got shape {data.shape}")
    if level not in ALPHA_LEVELS:
        raise ConfigError(f"level {level!r}: expected nominal, ordinal or interval")
    pairable = (~np.isnan(data)).sum(0) >= 2
    if len(np.unique(data[:, pairable][~np.isnan(data[:, pairable])])) < 2:
        raise ConfigError("Krippendorff's alpha needs pairable values with at least two distinct labels")
    krippendorff = require("krippendorff", "models")
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    from scipy.stats import rankdata

    return rankdata(np.asarray(x, dtype=np.float64), method="average")


def _pair(x: Sequence[float], y: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ConfigError(f"{what} needs two equally long lists of at least 2 values")
    return x, y


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks)."""
    from scipy.stats import spearmanr

    return float(spearmanr(*_pair(x, y, "Spearman's rho")).statistic)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((pairs - ties in x) (pairs - ties in y))."""
    from scipy.stats import kendalltau

    return float(kendalltau(*_pair(x, y, "Kendall's tau"), variant="b").statistic)


def label_agreement(human: Sequence[int], judge: Sequence[int]) -> dict:
    """The label-agreement summary the benchmark and ``sparsa judge --report`` give for one set of pairs
    (Krippendorff's alpha None where every value is one label)."""
    human, judge = _labels(human, judge)
    return {
        "pairs": int(human.size),
        "cohen_kappa_4grade": round(cohen_kappa(human, judge), 4),
        "cohen_kappa_binary": round(cohen_kappa(binarize(human), binarize(judge), labels=(0, 1)), 4),
        "cohen_kappa_4grade_quadratic": round(cohen_kappa(human, judge, weights="quadratic"), 4),
        "krippendorff_alpha_ordinal": _alpha_or_none(np.stack([human, judge]), "ordinal"),
        "krippendorff_alpha_interval": _alpha_or_none(np.stack([human, judge]), "interval"),
        "accuracy": round(float((human == judge).mean()), 4),
        "confusion_matrix_rows_human_cols_judge": confusion_matrix(human, judge).tolist(),
    }


def _alpha_or_none(data: np.ndarray, level: str) -> float | None:
    """Alpha rounded to 4 places; None where it is undefined (every value the same label)."""
    try:
        return round(krippendorff_alpha(data, level), 4)
    except ConfigError:
        return None
