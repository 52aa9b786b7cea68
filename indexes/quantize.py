"""Backend formats made at the backend edge: integer impacts and term strings.

Lucene impact indexes store integer term frequencies as impacts, and Anserini truncates float
query weights to ints, so both sides are quantized here explicitly with one scale.
"""

from __future__ import annotations

import numpy as np

from sparsa.types import SparseVector

DEFAULT_SCALE = 100.0


def quantize(values: np.ndarray, scale: float = DEFAULT_SCALE) -> np.ndarray:
    """Round ``values * scale`` to ints; positive weights never round down to zero."""
    q = np.rint(values * scale).astype(np.int32)
    return np.where((values > 0) & (q < 1), 1, q)


def term_strings(vector: SparseVector) -> list[str]:
    """Term ids as the tokens stored in Lucene and Seismic ("2023" for term 2023)."""
    return [str(i) for i in vector.indices.tolist()]


def impact_dict(vector: SparseVector, scale: float = DEFAULT_SCALE) -> dict[str, int]:
    return dict(zip(term_strings(vector), quantize(vector.values, scale).tolist(), strict=True))
