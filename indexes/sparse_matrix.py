"""Encoded documents as one CSR matrix: the stored form of a learned sparse index.

Every learned-sparse backend (exact, Seismic, Lucene impact) is built from this matrix, and the
matrix is kept in the index folder, so any backend can be rebuilt without re-encoding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsa.errors import IndexCorruptError
from sparsa.sparse_rows import SparseRows
from sparsa.types import SparseVector


@dataclass(frozen=True, slots=True)
class SparseMatrix:
    """Row i is document ``doc_ids[i]``. indptr: int64[n+1]; indices: int32[nnz]; values: float32[nnz]."""

    doc_ids: list[str]
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    dim: int  # vocabulary size

    @classmethod
    def from_vectors(cls, doc_ids: Sequence[str], vectors: Sequence[SparseVector], dim: int) -> SparseMatrix:
        if len(doc_ids) != len(vectors):
            raise ValueError(f"{len(doc_ids)} ids for {len(vectors)} vectors")
        lengths = np.fromiter((v.nnz for v in vectors), dtype=np.int64, count=len(vectors))
        indptr = np.zeros(len(vectors) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        indices = np.concatenate([v.indices for v in vectors]) if vectors else np.zeros(0, np.int32)
        values = np.concatenate([v.values for v in vectors]) if vectors else np.zeros(0, np.float32)
        if indices.size and int(indices.max()) >= dim:
            raise ValueError(f"term id {int(indices.max())} is outside the vocabulary of size {dim}")
        return cls(list(doc_ids), indptr, indices.astype(np.int32), values.astype(np.float32), dim)

    @classmethod
    def from_rows(cls, doc_ids: Sequence[str], rows: SparseRows, dim: int) -> SparseMatrix:
        """From an encoder's CSR block (``sparsa.sparse_rows.SparseRows``): no per-document work."""
        if len(doc_ids) != len(rows):
            raise ValueError(f"{len(doc_ids)} ids for {len(rows)} rows")
        if rows.nnz and int(rows.indices.max()) >= dim:
            raise ValueError(f"term id {int(rows.indices.max())} is outside the vocabulary of size {dim}")
        return cls(list(doc_ids), rows.indptr.astype(np.int64, copy=False),
                   rows.indices.astype(np.int32, copy=False), rows.values.astype(np.float32, copy=False), dim)

    @classmethod
    def concat(cls, parts: Sequence[SparseMatrix]) -> SparseMatrix:
        if not parts:
            raise ValueError("nothing to concatenate")
        offsets = np.cumsum([0] + [int(p.indptr[-1]) for p in parts[:-1]])
        indptr = np.concatenate([parts[0].indptr[:1]]
                                + [p.indptr[1:] + off for p, off in zip(parts, offsets)])
        return cls(
            [d for p in parts for d in p.doc_ids], indptr,
            np.concatenate([p.indices for p in parts]), np.concatenate([p.values for p in parts]),
            parts[0].dim,
        )

    def __len__(self) -> int:
        return len(self.doc_ids)

    def row(self, i: int) -> SparseVector:
        start, end = self.indptr[i], self.indptr[i + 1]
        return SparseVector(self.indices[start:end], self.values[start:end])

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "indptr.npy", self.indptr)
        np.save(folder / "indices.npy", self.indices)
        np.save(folder / "values.npy", self.values)
        (folder / "doc_ids.json").write_text(json.dumps({"dim": self.dim, "doc_ids": self.doc_ids}))

    @classmethod
    def load(cls, folder: Path) -> SparseMatrix:
        try:
            meta = json.loads((folder / "doc_ids.json").read_text())
            matrix = cls(meta["doc_ids"], np.load(folder / "indptr.npy"), np.load(folder / "indices.npy"),
                         np.load(folder / "values.npy"), int(meta["dim"]))
        except (OSError, ValueError, KeyError) as exc:
            raise IndexCorruptError(f"{folder}: cannot read the stored vectors "
                                    f"({exc}); rebuild the index") from None
        if (len(matrix.indptr) != len(matrix.doc_ids) + 1
                or not matrix.nnz == len(matrix.indices) == len(matrix.values)):
            raise IndexCorruptError(f"{folder}: stored vectors are inconsistent; rebuild the index")
        return matrix
