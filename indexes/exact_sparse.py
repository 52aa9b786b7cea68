"""Exact learned-sparse search: documents as a CSR matrix, scores by sparse x dense matmul, top-k.

One code path for CPU and GPU (torch sparse CSR). Queries are scored in batches, and the batch is
sized so the (documents x batch) score block stays under a fixed number of elements.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sparsa.config import load_settings, resolve_device
from sparsa.indexes.sparse_matrix import SparseMatrix
from sparsa.types import Hit, SparseVector

logger = logging.getLogger(__name__)

_SCORE_BLOCK = 1 << 26  # elements of the (documents x queries) score block held at once


class ExactSparseSearcher:
    """Brute-force dot products over every document: the ground truth for approximate engines."""

    name = "exact"

    def __init__(self, matrix: SparseMatrix, device: str = "auto"):
        import torch

        self.matrix = matrix
        self.device = torch.device(resolve_device(device))
        with warnings.catch_warnings():  # "sparse CSR support is in beta": we rely only on mm
            warnings.simplefilter("ignore", UserWarning)
            self._docs = torch.sparse_csr_tensor(
                torch.from_numpy(matrix.indptr), torch.from_numpy(matrix.indices.astype(np.int64)),
                torch.from_numpy(matrix.values), size=(len(matrix), matrix.dim), check_invariants=False,
            ).to(self.device)

    @classmethod
    def build(cls, matrix: SparseMatrix, folder: Path, config: dict) -> ExactSparseSearcher:
        return cls(matrix)  # the stored vectors are the whole index

    @classmethod
    def open(cls, folder: Path, matrix: SparseMatrix, config: dict) -> ExactSparseSearcher:
        return cls(matrix, load_settings().device)

    def settings(self) -> dict:
        return {}

    def search(self, queries: Sequence[SparseVector], k: int) -> list[list[Hit]]:
        import torch

        k = min(k, len(self.matrix))
        batch = max(1, min(256, _SCORE_BLOCK // max(1, len(self.matrix))))
        results: list[list[Hit]] = []
        with torch.inference_mode():
            for start in range(0, len(queries), batch):
                chunk = queries[start : start + batch]
                dense = torch.zeros(self.matrix.dim, len(chunk), dtype=torch.float32)
                for j, q in enumerate(chunk):
                    dense[torch.from_numpy(q.indices.astype(np.int64)), j] = torch.from_numpy(q.values)
                scores = torch.sparse.mm(self._docs, dense.to(self.device))  # [docs, batch]
                top = torch.topk(scores, k, dim=0)
                values, rows = top.values.T.cpu().numpy(), top.indices.T.cpu().numpy()
                for j in range(len(chunk)):
                    keep = values[j] > 0  # documents sharing no term with the query are not hits
                    results.append([Hit(self.matrix.doc_ids[r], float(v))
                                    for r, v in zip(rows[j][keep], values[j][keep])])
        return results
