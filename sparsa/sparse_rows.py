"""Sparse rows as three flat arrays (CSR): how encoders hand a whole block of vectors to an index build.

A list of :class:`~sparsa.types.SparseVector` costs a Python object (and a validation) per document; at
tens of thousands of documents a second that per-document work, not the model, bounded GPU indexing.
:class:`SparseRows` keeps a block as ``indptr int64[n+1]``, ``indices int32[nnz]`` (sorted within each
row), ``values float32[nnz]``, and every step (reordering length-sorted batches back to input order,
cutting shards, joining them) is a handful of numpy calls over the whole block.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sparsa.types import SparseVector


@dataclass(frozen=True, slots=True)
class SparseRows:
    """``n`` sparse rows in CSR form; row ``i`` is ``indices/values[indptr[i]:indptr[i+1]]``."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1] - self.indptr[0])

    @classmethod
    def empty(cls) -> SparseRows:
        return cls(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))

    @classmethod
    def from_counts(cls, counts: np.ndarray, indices: np.ndarray, values: np.ndarray) -> SparseRows:
        indptr = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, indices, values)

    @classmethod
    def from_vectors(cls, vectors: Sequence[SparseVector]) -> SparseRows:
        counts = np.fromiter((v.nnz for v in vectors), dtype=np.int64, count=len(vectors))
        if not vectors:
            return cls.empty()
        return cls.from_counts(counts, np.concatenate([v.indices for v in vectors]).astype(np.int32),
                               np.concatenate([v.values for v in vectors]).astype(np.float32))

    def slice(self, start: int, stop: int) -> SparseRows:
        """Rows ``start:stop`` (``indptr`` rebased to 0; the arrays are views where they can be)."""
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return SparseRows(self.indptr[start : stop + 1] - lo, self.indices[lo:hi], self.values[lo:hi])

    @classmethod
    def concat(cls, parts: Sequence[SparseRows]) -> SparseRows:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0].slice(0, len(parts[0]))
        counts = np.concatenate([np.diff(p.indptr) for p in parts])
        return cls.from_counts(counts, np.concatenate([p.indices[p.indptr[0] : p.indptr[-1]] for p in parts]),
                               np.concatenate([p.values[p.indptr[0] : p.indptr[-1]] for p in parts]))

    def permuted(self, rows: np.ndarray) -> SparseRows:
        """A new block whose row ``i`` is row ``rows[i]`` of this one (one gather over all entries)."""
        counts = np.diff(self.indptr)[rows]
        out_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=out_ptr[1:])
        # Entry j of the output comes from entry (start of its source row) + (j - start of its output row).
        source = np.repeat(self.indptr[:-1][rows] - out_ptr[:-1], counts) + np.arange(out_ptr[-1])
        return SparseRows(out_ptr, self.indices[source], self.values[source])

    def vectors(self) -> list[SparseVector]:
        ends = self.indptr.tolist()
        return [SparseVector(self.indices[a:b], self.values[a:b]) for a, b in itertools.pairwise(ends)]
