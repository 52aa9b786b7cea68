"""The exact learned-sparse engine sharded over several devices: an index larger than one GPU.

The CSR rows are cut into contiguous ranges of about equal entries (nnz), one per device. Each shard is
an :class:`~sparsa.indexes.exact_sparse.ExactSparseSearcher` over its row slice, on its own device, with
its own copy of each query batch; the shards run at once (one thread each: torch releases the GIL, so
the GPUs overlap), each returns its canonical top-k (descending score, ties by row), and the merge takes
the canonical top-k of their union with rows shifted by the shard's first row. A document in the global
top-k is in its shard's top-k under the same total order, so the hits are exactly the single-device
engine's, ids, scores and order (``tests/indexes/test_exact_shards.py``).

Memory per device: the shard's CSR block, ``(rows + 1) * 4 + nnz * 8`` bytes (int32 indices, float32
values; each shard is indexed by int32 while it holds fewer than 2^31 entries, even if the whole index
does not), plus one search batch, at most ``4 * batch * (2 * rows + vocab)`` bytes (the score block
stays under 2^28 elements). Opening checks each CUDA shard against ``torch.cuda.mem_get_info`` and
names the device count the index needs. Plain per-device torch: no NCCL, no peer-to-peer copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np

from sparsa.config import resolve_devices
from sparsa.errors import ConfigError
from sparsa.indexes.exact_sparse import (
    ExactSparseSearcher,
    TopRowsSearcher,
    canonical_order,
    check_fits,
    search_batch,
)
from sparsa.indexes.sparse_matrix import SparseMatrix
from sparsa.types import SparseVector


def split_rows(indptr: np.ndarray, shards: int) -> list[int]:
    """Row boundaries [0, ..., rows] of ``shards`` contiguous ranges of about equal entries, each at
    least one row."""
    rows = len(indptr) - 1
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    if shards > rows:
        raise ConfigError(f"cannot cut {rows} documents into {shards} shards: give at most {rows} devices")
    nnz = int(indptr[-1])
    cuts = np.searchsorted(indptr, [nnz * i / shards for i in range(1, shards)]).tolist()
    bounds = [0]
    for i, cut in enumerate(cuts, start=1):  # keep every range non-empty
        bounds.append(min(max(int(cut), bounds[-1] + 1), rows - (shards - i)))
    return [*bounds, rows]


def row_slice(matrix: SparseMatrix, start: int, end: int) -> SparseMatrix:
    """Rows [start, end) as a matrix of their own (views of the arrays, indptr rebased)."""
    lo, hi = int(matrix.indptr[start]), int(matrix.indptr[end])
    return SparseMatrix(matrix.doc_ids[start:end], matrix.indptr[start : end + 1] - lo,
                        matrix.indices[lo:hi], matrix.values[lo:hi], matrix.dim)


class ShardedExactSearcher(TopRowsSearcher):
    """Exact top-k over shards of the CSR rows, one per device; the same hits as one device."""

    def __init__(self, matrix: SparseMatrix, devices: str | Sequence[str], batch_size: int | None = None,
                 backend: str = "auto", bounds: Sequence[int] | None = None, index_name: str = "the index"):
        """``devices``: a spec or list (``"cuda:0,cuda:1"``, ``"cuda:all"``, ``["cpu", "cpu"]``);
        ``bounds``: row boundaries ``[0, ..., len(matrix)]`` (default: :func:`split_rows`)."""
        self.matrix = matrix
        self.devices = resolve_devices(devices)
        bounds = list(bounds) if bounds is not None else split_rows(matrix.indptr, len(self.devices))
        if (len(bounds) != len(self.devices) + 1 or bounds[0] != 0 or bounds[-1] != len(matrix)
                or any(a >= b for a, b in pairwise(bounds))):
            raise ConfigError(f"bounds {bounds}: expected {len(self.devices) + 1} increasing row numbers "
                              f"from 0 to {len(matrix)}")
        self.bounds = bounds
        # The whole index's query batch on every shard: the same chunks as one device, so each score is
        # the same float sum (a matmul's sums may change with the batch width)
        batch_size = search_batch(len(matrix), batch_size)
        slices = [row_slice(matrix, a, b) for a, b in pairwise(bounds)]
        for part, device in zip(slices, self.devices):  # every shard checked before any is loaded
            check_fits(index_name, device, len(part), part.nnz, matrix.dim, batch_size, matrix.nnz,
                       len(matrix), len(self.devices))
        self.shards = [ExactSparseSearcher(part, device, batch_size, backend, index_name)
                       for part, device in zip(slices, self.devices)]
        self._pool = ThreadPoolExecutor(len(self.shards), thread_name_prefix="exact-shard")

    def top_rows(self, queries: Sequence[SparseVector], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores [queries, min(k, documents)], canonical order, as one device gives them."""
        k = min(k, len(self.matrix))
        parts = list(self._pool.map(lambda shard: shard.top_rows(queries, k), self.shards))
        rows = np.concatenate([r + start for (r, _), start in zip(parts, self.bounds)], axis=1)
        return canonical_order(rows, np.concatenate([s for _, s in parts], axis=1), k)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{d}: {b - a}" for d, (a, b) in zip(self.devices, pairwise(self.bounds)))
        return f"ShardedExactSearcher({len(self.matrix)} documents; {sizes})"
