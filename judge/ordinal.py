"""The proportional-odds (cumulative-logit) model for ordinal grades 0..K-1.

``P(grade >= k | x) = sigmoid(x @ w - c_k)`` for k = 1..K-1 with increasing cutpoints ``c``: one
weight vector shared by every grade boundary (McCullagh 1980). It is the likelihood model of an
ordered label, where least squares treats the grades 0-3 as equally spaced numbers; its expected
grade ``sum_k P(grade >= k)`` is a monotone map of ``x @ w`` into [0, K-1], used for expected-gain
qrels (``GradeCalibrator.expected_grades``).

Fitted by maximum likelihood with L-BFGS (scipy) and an analytic gradient; the cutpoints are
parametrised as ``c_1`` plus log-increments so they stay ordered. A small ridge on ``w`` keeps the
fit finite on separable data.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from sparsa.errors import ConfigError


def _cutpoints(theta: np.ndarray) -> np.ndarray:
    return theta[0] + np.concatenate([[0.0], np.cumsum(np.exp(theta[1:]))])


def cumulative_probs(scores: np.ndarray, cutpoints: np.ndarray) -> np.ndarray:
    """``float64[n, K-1]``: P(grade >= k) for k = 1..K-1."""
    return expit(np.asarray(scores, dtype=np.float64)[:, None] - np.asarray(cutpoints)[None, :])


def expected_grade(scores: np.ndarray, cutpoints: np.ndarray) -> np.ndarray:
    """``float64[n]``: E[grade] = sum_k P(grade >= k), in [0, K-1] and increasing in ``scores``."""
    return cumulative_probs(scores, cutpoints).sum(1)


def fit_proportional_odds(x: np.ndarray, grades: np.ndarray, levels: int = 4,
                          ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood ``(weights float64[d], cutpoints float64[levels-1])`` for ``x float64[n, d]``;
    the penalty is ``ridge * n * |w|^2 / 2`` (the same scale as the least-squares calibrator's)."""
    x, grades = np.asarray(x, dtype=np.float64), np.asarray(grades)
    n, d = x.shape
    if grades.min() < 0 or grades.max() >= levels:
        raise ConfigError(f"grades must lie in 0..{levels - 1}")
    shares = np.cumsum(np.bincount(grades, minlength=levels))[:-1] / n  # P(grade < k), k = 1..K-1
    start_c = np.log(np.clip(shares, 1e-3, 1 - 1e-3) / (1 - np.clip(shares, 1e-3, 1 - 1e-3)))
    start = np.concatenate([np.zeros(d), [start_c[0]], np.log(np.maximum(np.diff(start_c), 1e-3))])
    rows = np.arange(n)

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, theta = params[:d], params[d:]
        c = _cutpoints(theta)
        s = x @ w
        # upper[i, k] = P(grade >= k) for k = 0..K (1 at k = 0, 0 at k = K)
        upper = np.concatenate([np.ones((n, 1)), cumulative_probs(s, c), np.zeros((n, 1))], axis=1)
        density = upper * (1 - upper)  # sigmoid'(s - c_k); 0 at the two fixed ends
        p = np.maximum(upper[rows, grades] - upper[rows, grades + 1], 1e-300)
        loss = -np.log(p).sum() + 0.5 * ridge * n * (w @ w)
        d_s = (density[rows, grades] - density[rows, grades + 1]) / p  # d log p / d s
        grad_w = -(x.T @ d_s) + ridge * n * w
        d_c = np.zeros((n, levels + 1))  # d log p / d c_k, columns k = 0..K
        d_c[rows, grades] -= density[rows, grades] / p
        d_c[rows, grades + 1] += density[rows, grades + 1] / p
        grad_c = -d_c[:, 1:levels].sum(0)
        # c_j = theta_0 + sum_{i=1..j-1} exp(theta_i): dc_j/dtheta_0 = 1, dc_j/dtheta_i =
        # exp(theta_i) for i < j
        grad_theta = np.concatenate([[grad_c.sum()], np.exp(theta[1:]) * np.cumsum(grad_c[::-1])[::-1][1:]])
        return float(loss), np.concatenate([grad_w, grad_theta])

    result = minimize(objective, start, jac=True, method="L-BFGS-B", options={"maxiter": 1000})
    return result.x[:d], _cutpoints(result.x[d:])
