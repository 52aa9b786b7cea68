"""Agreement between judges: label agreement (Cohen's kappa, Krippendorff's alpha, confusion
matrix) and rank correlation between system orderings (Kendall's tau-b, Spearman's rho).

Implemented here with numpy (each a few lines, checked against hand-computed values in
``tests/eval/test_agreement.py``) so the definitions are explicit:

- Cohen's kappa: ``(p_o - p_e) / (1 - p_e)`` with chance agreement from the two marginals;
  optional linear/quadratic weights. LLMJudge reports the unweighted 4-grade kappa.
- Krippendorff's alpha: ``1 - (n - 1) * sum(o_ck d_ck) / sum(n_c n_k d_ck)`` over the coincidence
  matrix, for any number of coders with missing values (NaN); ``level`` picks the difference
  function: "nominal", "ordinal" (Krippendorff's rank-based metric, the right one for 0-3
  grades) or "interval" (squared difference).
- Kendall's tau-b (ties corrected) and Spearman's rho (Pearson on average ranks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sparsa.errors import ConfigError

GRADES = (0, 1, 2, 3)


def _labels(a: Sequence[int], b: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ConfigError(f"need two equally long non-empty label lists, got shapes {a.shape} and {b.shape}")
    return a, b


def confusion_matrix(truth: Sequence[int], predicted: Sequence[int], labels: Sequence[int] = GRADES) -> np.ndarray:
    """``int64[L, L]``: row = ``truth`` label, column = ``predicted`` label, in ``labels`` order."""
    truth, predicted = _labels(truth, predicted)
    index = {label: i for i, label in enumerate(labels)}
    unknown = set(truth.tolist()) | set(predicted.tolist()) - set(index)
    if unknown - set(index):
        raise ConfigError(f"labels {sorted(unknown - set(index))} are not in {list(labels)}")
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, ([index[x] for x in truth.tolist()], [index[x] for x in predicted.tolist()]), 1)
    return matrix


def cohen_kappa(a: Sequence[int], b: Sequence[int], labels: Sequence[int] = GRADES,
                weights: str | None = None) -> float:
    """Cohen's kappa of two label lists; ``weights`` None (unweighted), "linear" or "quadratic"."""
    matrix = confusion_matrix(a, b, labels).astype(np.float64)
    observed = matrix / matrix.sum()
    expected = np.outer(observed.sum(1), observed.sum(0))
    i, j = np.indices(matrix.shape)
    if weights is None:
        disagreement = (i != j).astype(np.float64)
    elif weights == "linear":
        disagreement = np.abs(i - j).astype(np.float64)
    elif weights == "quadratic":
        disagreement = ((i - j) ** 2).astype(np.float64)
    else:
        raise ConfigError(f"weights {weights!r}: expected None, 'linear' or 'quadratic'")
    chance = (disagreement * expected).sum()
    if chance == 0:  # both judges used one and the same label: agreement is perfect but uninformative
        return 1.0 if (disagreement * observed).sum() == 0 else 0.0
    return float(1.0 - (disagreement * observed).sum() / chance)


def binarize(grades: Sequence[int], threshold: int = 2) -> np.ndarray:
    """TREC DL binary relevance: grade >= ``threshold`` (2 for DL passages) is relevant."""
    return (np.asarray(grades) >= threshold).astype(np.int64)


def krippendorff_alpha(data: np.ndarray | Sequence[Sequence[float]], level: str = "ordinal") -> float:
    """Krippendorff's alpha of ``data[coders, units]`` (NaN = missing); ``level``: nominal/ordinal/interval."""
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] < 2:
        raise ConfigError(f"need data[coders >= 2, units], got shape {data.shape}")
    values = np.unique(data[~np.isnan(data)])
    index = {v: i for i, v in enumerate(values)}
    coincidence = np.zeros((len(values), len(values)))
    for unit in data.T:
        present = [index[v] for v in unit[~np.isnan(unit)]]
        if len(present) < 2:
            continue  # a unit coded once is not pairable
        for x in range(len(present)):
            for y in range(len(present)):
                if x != y:
                    coincidence[present[x], present[y]] += 1.0 / (len(present) - 1)
    totals = coincidence.sum(1)
    n = totals.sum()
    if n == 0 or len(values) < 2:
        raise ConfigError("Krippendorff's alpha needs pairable values with at least two distinct labels")
    delta = _difference(values, totals, level)
    observed = (coincidence * delta).sum()
    expected = (np.outer(totals, totals) * delta).sum()
    return float(1.0 - (n - 1) * observed / expected)


def _difference(values: np.ndarray, totals: np.ndarray, level: str) -> np.ndarray:
    """Squared difference function delta^2(c, k) between the observed values."""
    c, k = np.indices((len(values), len(values)))
    if level == "nominal":
        return (c != k).astype(np.float64)
    if level == "interval":
        return (values[c] - values[k]) ** 2
    if level == "ordinal":  # (sum of n_g for g from c to k, minus half of n_c and n_k) squared
        cumulative = np.concatenate([[0.0], np.cumsum(totals)])
        low, high = np.minimum(c, k), np.maximum(c, k)
        between = cumulative[high + 1] - cumulative[low]
        return (between - (totals[c] + totals[k]) / 2) ** 2 * (c != k)
    raise ConfigError(f"level {level!r}: expected nominal, ordinal or interval")


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks)."""
    rx, ry = average_ranks(x), average_ranks(y)
    if len(rx) != len(ry) or len(rx) < 2:
        raise ConfigError("Spearman's rho needs two equally long lists of at least 2 values")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx @ ry) / np.sqrt((rx @ rx) * (ry @ ry)))


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((pairs - ties in x) (pairs - ties in y))."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ConfigError("Kendall's tau needs two equally long lists of at least 2 values")
    i, j = np.triu_indices(len(x), k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    pairs = len(i)
    return float((sx * sy).sum() / np.sqrt((pairs - (sx == 0).sum()) * (pairs - (sy == 0).sum())))


def label_agreement(human: Sequence[int], judge: Sequence[int]) -> dict:
    """The label-agreement summary the benchmark reports for one set of pairs."""
    human, judge = _labels(human, judge)
    return {
        "pairs": int(human.size),
        "cohen_kappa_4grade": round(cohen_kappa(human, judge), 4),
        "cohen_kappa_binary": round(cohen_kappa(binarize(human), binarize(judge), labels=(0, 1)), 4),
        "cohen_kappa_4grade_quadratic": round(cohen_kappa(human, judge, weights="quadratic"), 4),
        "krippendorff_alpha_ordinal": round(krippendorff_alpha(np.stack([human, judge])), 4),
        "krippendorff_alpha_interval": round(krippendorff_alpha(np.stack([human, judge]), "interval"), 4),
        "accuracy": round(float((human == judge).mean()), 4),
        "confusion_matrix_rows_human_cols_judge": confusion_matrix(human, judge).tolist(),
    }
