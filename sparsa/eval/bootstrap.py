"""Paired bootstrap of a mean difference (the benches' and ``sparsa train router``'s confidence intervals)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean of ``a - b`` over paired items (questions, queries) and its bootstrap 95% interval: the pairs
    are resampled ``resamples`` times with replacement (the benches use this one too, so the CLI
    repeats the records' intervals)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    means = diff[np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))].mean(1)
    return {"diff": round(float(diff.mean()), 4),
            "ci95": [round(float(np.quantile(means, q)), 4) for q in (0.025, 0.975)]}
