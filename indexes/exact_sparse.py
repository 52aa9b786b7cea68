"""Exact learned-sparse search: the ground truth for approximate engines, and the GPU engine.

- CPU: an inverted index as a scipy CSC matrix; a query touches only its own terms' postings.
- CUDA: documents as a torch sparse CSR matrix (int32 indices while the collection has fewer than
  2^31 entries: half the index bytes that cuSPARSE streams per batch), a batch of queries as a dense
  [vocab, batch] block, one sparse x dense matmul and ``topk``. The batch is sized so the
  [documents, batch] score block stays under a fixed number of elements. Scores stay float32, so
  results equal the CPU path's. ``backend="torch"`` runs this path on the CPU too (tests, dry runs).
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

_SCORE_BLOCK = 1 << 28  # elements of the [documents, queries] score block held at once on the GPU


def _hits(doc_ids: list[str], rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
    """Hits for the given rows, skipping documents that share no term with the query."""
    return [Hit(doc_ids[r], float(s)) for r, s in zip(rows.tolist(), scores.tolist()) if s > 0]


class ExactSparseSearcher:
    """Scores every document that shares a term with the query; exact top-k."""

    name = "exact"

    def __init__(self, matrix: SparseMatrix, device: str = "auto", batch_size: int | None = None,
                 backend: str = "auto"):
        if backend not in ("auto", "scipy", "torch"):
            raise ValueError(f"backend must be auto, scipy or torch, not {backend!r}")
        self.matrix = matrix
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self._use_torch = backend == "torch" or (backend == "auto" and self.device != "cpu")
        if not self._use_torch:
            import scipy.sparse as sp

            shape = (len(matrix), matrix.dim)
            self._postings = sp.csr_matrix((matrix.values, matrix.indices, matrix.indptr),
                                           shape=shape).tocsc()
        else:
            import torch

            index_dtype = np.int32 if matrix.nnz < 2**31 else np.int64
            with warnings.catch_warnings():  # "sparse CSR support is in beta": we rely only on mm
                warnings.simplefilter("ignore", UserWarning)
                self._docs = torch.sparse_csr_tensor(
                    torch.from_numpy(matrix.indptr.astype(index_dtype)).to(self.device),
                    torch.from_numpy(matrix.indices.astype(index_dtype, copy=False)).to(self.device),
                    torch.from_numpy(matrix.values).to(self.device), size=(len(matrix), matrix.dim),
                    check_invariants=False,
                )

    @classmethod
    def build(cls, matrix: SparseMatrix, folder: Path, config: dict) -> ExactSparseSearcher:
        return cls(matrix, "cpu")  # the stored vectors are the whole index

    @classmethod
    def open(cls, folder: Path, matrix: SparseMatrix, config: dict) -> ExactSparseSearcher:
        return cls(matrix, load_settings().device)

    def settings(self) -> dict:
        return {}

    def search_vectors(self, queries: Sequence[SparseVector], k: int) -> list[list[Hit]]:
        k = min(k, len(self.matrix))
        return self._search_torch(queries, k) if self._use_torch else self._search_cpu(queries, k)

    def _search_cpu(self, queries: Sequence[SparseVector], k: int) -> list[list[Hit]]:
        results = []
        for q in queries:
            scores = self._postings[:, q.indices] @ q.values  # [documents]
            top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
            top = top[np.argsort(-scores[top], kind="stable")]
            results.append(_hits(self.matrix.doc_ids, top, scores[top]))
        return results

    def _search_torch(self, queries: Sequence[SparseVector], k: int) -> list[list[Hit]]:
        import torch

        batch = self.batch_size or max(1, min(1024, _SCORE_BLOCK // max(1, len(self.matrix))))
        results: list[list[Hit]] = []
        with torch.inference_mode():
            for start in range(0, len(queries), batch):
                chunk = queries[start : start + batch]
                cols = np.concatenate([np.full(q.nnz, j) for j, q in enumerate(chunk)])
                rows = np.concatenate([q.indices for q in chunk]).astype(np.int64)
                dense = torch.zeros(self.matrix.dim, len(chunk), dtype=torch.float32, device=self.device)
                dense[torch.from_numpy(rows).to(self.device), torch.from_numpy(cols).to(self.device)] = \
                    torch.from_numpy(np.concatenate([q.values for q in chunk])).to(self.device)
                top = torch.topk(torch.sparse.mm(self._docs, dense), k, dim=0)  # of [documents, batch]
                values, rows_top = top.values.T.cpu().numpy(), top.indices.T.cpu().numpy()
                results.extend(_hits(self.matrix.doc_ids, rows_top[j], values[j]) for j in range(len(chunk)))
        return results
