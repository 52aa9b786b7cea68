"""Exact learned-sparse search: the ground truth for approximate engines, and the GPU engine.

- CPU: an inverted index as a scipy CSC matrix; a query touches only its own terms' postings.
- CUDA: documents as a torch sparse CSR matrix (int32 indices while the collection has fewer than
  2^31 entries: half the index bytes that cuSPARSE streams per batch), a batch of queries as a dense
  [vocab, batch] block, one sparse x dense matmul and ``topk``. The batch is sized so the
  [documents, batch] score block stays under a fixed number of elements. Scores stay float32, so
  results equal the CPU path's up to the last bits of the sums (the two sum in different orders; so may
  one matmul at two batch widths). ``backend="torch"`` runs this path on the CPU too (tests, dry runs).

Both paths cut the top-k by one rule: descending score, ties by document order (row), also at the k-th
place, so a sharded search (``indexes/exact_shards.py``: one shard per GPU, ``device="cuda:all"``) merges
to exactly one device's hits. Use :func:`exact_searcher` for a device spec that may name several devices.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparsa.config import is_device_list, load_settings, resolve_device, resolve_devices
from sparsa.errors import ConfigError
from sparsa.indexes.sparse_matrix import SparseMatrix
from sparsa.types import Hit, SparseVector

logger = logging.getLogger(__name__)

_SCORE_BLOCK = 1 << 28  # elements of the [documents, queries] score block held at once on the GPU


def _hits(doc_ids: list[str], rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
    """Hits for the given rows, skipping documents that share no term with the query."""
    return [Hit(doc_ids[r], float(s)) for r, s in zip(rows.tolist(), scores.tolist()) if s > 0]


def canonical_order(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` of each row of candidates [queries, n] by descending score, ties by row."""
    order = np.lexsort((rows, -scores), axis=-1)[:, :k]
    return np.take_along_axis(rows, order, -1), np.take_along_axis(scores, order, -1)


def index_bytes(rows: int, nnz: int) -> int:
    """Device bytes of a CSR block: int32 indices below 2^31 entries (as opened), float32 values."""
    width = 4 if nnz < 2**31 else 8
    return (rows + 1) * width + nnz * (width + 4)


def search_batch(rows: int, batch_size: int | None = None) -> int:
    """Queries per matmul: the [rows, batch] score block stays under ``_SCORE_BLOCK`` elements."""
    return batch_size or max(1, min(1024, _SCORE_BLOCK // max(1, rows)))


def working_bytes(rows: int, dim: int, batch: int) -> int:
    """Device bytes one search batch needs beside the index: the score block, the dense query block
    and ``topk``'s copy of the scores (the bound, not a typical figure)."""
    return 4 * batch * (2 * rows + dim)


def check_fits(name: str, device: str, rows: int, nnz: int, dim: int, batch: int, total_nnz: int,
               total_rows: int, devices: int) -> None:
    """Refuse at open a CUDA shard that will not fit its device's free memory, naming the index and
    about how many devices of this size it needs (``torch.cuda.mem_get_info``)."""
    import torch

    if not device.startswith("cuda"):
        return
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    need = index_bytes(rows, nnz) + working_bytes(rows, dim, batch)
    if need <= free:
        return
    gib = 2**30
    usable = max(free - working_bytes(max(1, total_rows // devices), dim, batch), 1)
    needed = max(devices + 1, -(-index_bytes(total_rows, total_nnz) // usable))
    raise ConfigError(
        f"{name}: {'a shard of ' if devices > 1 else ''}{rows:,} documents ({nnz:,} entries) needs "
        f"{need / gib:.1f} GiB on {device} (index {index_bytes(rows, nnz) / gib:.1f} GiB + search "
        f"{working_bytes(rows, dim, batch) / gib:.1f} GiB), which has {free / gib:.1f} GiB free: shard "
        f"it over about {needed} devices of this size (device='cuda:0,cuda:1,...' or 'cuda:all'), or "
        "search it on the CPU")


class TopRowsSearcher:
    """What the exact searchers share: hits from :meth:`top_rows` (rows and scores in canonical order),
    which each implements (one device here, shards in ``exact_shards``)."""

    name = "exact"
    matrix: SparseMatrix

    def top_rows(self, queries: Sequence[SparseVector], k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def settings(self) -> dict:
        return {}

    def search_vectors(self, queries: Sequence[SparseVector], k: int) -> list[list[Hit]]:
        rows, scores = self.top_rows(queries, k)
        return [_hits(self.matrix.doc_ids, r, s) for r, s in zip(rows, scores)]


class ExactSparseSearcher(TopRowsSearcher):
    """Scores every document that shares a term with the query; exact top-k."""

    takes_device = True  # LearnedSparseIndex.open passes a run-time device spec to ``open``

    def __init__(self, matrix: SparseMatrix, device: str = "auto", batch_size: int | None = None,
                 backend: str = "auto", index_name: str = "the index", lazy: bool = False):
        if backend not in ("auto", "scipy", "torch"):
            raise ValueError(f"backend must be auto, scipy or torch, not {backend!r}")
        if is_device_list(device):
            raise ConfigError(f"device {device!r} names several devices: use exact_searcher(matrix, "
                              f"{device!r}) or ShardedExactSearcher (sparsa.indexes.exact_shards)")
        self.matrix = matrix
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self._use_torch = backend == "torch" or (backend == "auto" and self.device != "cpu")
        # Made at open, so the first search pays nothing; ``lazy`` (an index build): on first use.
        self._csc = None if self._use_torch or lazy else self._make_csc()
        if self._use_torch:
            import torch

            check_fits(index_name, self.device, len(matrix), matrix.nnz, matrix.dim,
                       search_batch(len(matrix), batch_size), matrix.nnz, len(matrix), 1)
            index_dtype = np.int32 if matrix.nnz < 2**31 else np.int64
            with warnings.catch_warnings():  # "sparse CSR support is in beta": we rely only on mm
                warnings.simplefilter("ignore", UserWarning)
                self._docs = torch.sparse_csr_tensor(
                    torch.from_numpy(matrix.indptr.astype(index_dtype)).to(self.device),
                    torch.from_numpy(matrix.indices.astype(index_dtype, copy=False)).to(self.device),
                    torch.from_numpy(matrix.values).to(self.device), size=(len(matrix), matrix.dim),
                    check_invariants=False,
                )

    def _make_csc(self) -> Any:
        """The CPU inverted index: the documents as a scipy CSC matrix."""
        import scipy.sparse as sp

        m = self.matrix
        return sp.csr_matrix((m.values, m.indices, m.indptr), shape=(len(m), m.dim)).tocsc()

    @property
    def _postings(self) -> Any:
        if self._csc is None:
            self._csc = self._make_csc()
        return self._csc

    @classmethod
    def build(cls, matrix: SparseMatrix, folder: Path, config: dict) -> ExactSparseSearcher:
        # The stored vectors are the whole index. An index build only reads the settings of what it
        # returns: the inverted index (0.2-0.6 s per 100k splade-tiny documents, index_harness_cpu.json)
        # waits for a search.
        return cls(matrix, "cpu", lazy=True)

    @classmethod
    def open(cls, folder: Path, matrix: SparseMatrix, config: dict, device: str | None = None) -> Any:
        """``device``: a spec (default ``SPARSA_DEVICE``); several devices open a sharded searcher."""
        return exact_searcher(matrix, device or load_settings().device, index_name=str(folder))

    def top_rows(self, queries: Sequence[SparseVector], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores [queries, min(k, documents)] in canonical order (zero scores included)."""
        k = min(k, len(self.matrix))
        if not queries:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return self._search_torch(queries, k) if self._use_torch else self._search_cpu(queries, k)

    def _search_cpu(self, queries: Sequence[SparseVector], k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, values = np.zeros((len(queries), k), np.int64), np.zeros((len(queries), k), np.float32)
        for j, q in enumerate(queries):
            scores = self._postings[:, q.indices] @ q.values  # [documents]
            if k < len(scores):  # the (k+1)-th score shows whether the k-th is tied past the cut
                top = np.argpartition(-scores, k)[: k + 1]
                kth = scores[top[:k]].min()
                top = _tied_cut(scores, kth, k) if scores[top[k]] == kth > 0 else top[:k]
            else:
                top = np.arange(len(scores))
            rows[j], values[j] = top, scores[top]
        return canonical_order(rows, values, k)

    def _search_torch(self, queries: Sequence[SparseVector], k: int) -> tuple[np.ndarray, np.ndarray]:
        import contextlib

        import torch

        batch = search_batch(len(self.matrix), self.batch_size)
        deeper = min(k + 1, len(self.matrix))  # one more shows a tie at the k-th place
        rows_out, values_out = [], []
        on_gpu = torch.device(self.device).type == "cuda"
        with torch.inference_mode(), torch.cuda.device(self.device) if on_gpu else contextlib.nullcontext():
            for start in range(0, len(queries), batch):
                chunk = queries[start : start + batch]
                cols = np.concatenate([np.full(q.nnz, j) for j, q in enumerate(chunk)])
                rows = np.concatenate([q.indices for q in chunk]).astype(np.int64)
                dense = torch.zeros(self.matrix.dim, len(chunk), dtype=torch.float32, device=self.device)
                dense[torch.from_numpy(rows).to(self.device), torch.from_numpy(cols).to(self.device)] = \
                    torch.from_numpy(np.concatenate([q.values for q in chunk])).to(self.device)
                scores = torch.sparse.mm(self._docs, dense)  # [documents, batch]
                top = torch.topk(scores, deeper, dim=0)
                values, rows_top = top.values.T.cpu().numpy(), top.indices.T.cpu().numpy()
                if deeper > k:
                    for j in np.flatnonzero((values[:, k] == values[:, k - 1]) & (values[:, k - 1] > 0)):
                        col = scores[:, j].cpu().numpy()  # rare: documents tied at the k-th score
                        cut = _tied_cut(col, values[j, k - 1], k)
                        rows_top[j, :k], values[j, :k] = cut, col[cut]
                rows_out.append(rows_top[:, :k].astype(np.int64))
                values_out.append(values[:, :k])
        return canonical_order(np.concatenate(rows_out), np.concatenate(values_out), k)


def _tied_cut(scores: np.ndarray, kth: float, k: int) -> np.ndarray:
    """The top ``k`` rows of ``scores`` when several share the k-th score: the tied ones by row."""
    return np.concatenate([np.flatnonzero(scores > kth), np.flatnonzero(scores == kth)])[:k]


def exact_searcher(matrix: SparseMatrix, device: str | Sequence[str] = "auto", batch_size: int | None = None,
                   backend: str = "auto", index_name: str = "the index") -> Any:
    """The exact searcher for a device spec: one device (``cpu``, ``cuda:1``) gives an
    :class:`ExactSparseSearcher`; several (``cuda:0,cuda:1``, ``cuda:all``, a list) a
    :class:`~sparsa.indexes.exact_shards.ShardedExactSearcher` with one shard per device."""
    devices = resolve_devices(device)
    if len(devices) == 1:
        return ExactSparseSearcher(matrix, devices[0], batch_size, backend, index_name)
    from sparsa.indexes.exact_shards import ShardedExactSearcher

    return ShardedExactSearcher(matrix, devices, batch_size=batch_size, backend=backend,
                                index_name=index_name)
