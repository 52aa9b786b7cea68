"""The one representation of each concept, shared by every part of sparsa.

Documents, queries, sparse vectors, hits, runs and qrels are defined here and nowhere else. Dense
vectors are plain ``float32[n, d]`` numpy arrays. Backend formats (Lucene term strings, integer
impacts) are made at the backend edge and never passed around.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str
    title: str = ""
    meta: Mapping[str, Any] | None = None

    @property
    def full_text(self) -> str:
        """Title and body as one string: what BM25 "flat" and the encoders index."""
        return f"{self.title} {self.text}" if self.title else self.text


@dataclass(frozen=True, slots=True)
class Query:
    id: str
    text: str


@dataclass(frozen=True, slots=True)
class Hit:
    doc_id: str
    score: float


@dataclass(frozen=True, slots=True)
class SparseVector:
    """Term id -> weight. ``indices``: int32[nnz], sorted and unique; ``values``: float32[nnz]."""

    indices: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.indices.shape != self.values.shape or self.indices.ndim != 1:
            raise ValueError(
                f"indices and values must be 1-d and equal length, got {self.indices.shape} "
                f"and {self.values.shape}"
            )

    @classmethod
    def from_dict(cls, weights: Mapping[int, float]) -> SparseVector:
        order = sorted(weights)
        return cls(
            np.asarray(order, dtype=np.int32),
            np.asarray([weights[i] for i in order], dtype=np.float32),
        )

    @classmethod
    def from_dense(cls, row: np.ndarray) -> SparseVector:
        """Keep the non-zero entries of a 1-d dense vector over the vocabulary."""
        (nz,) = np.nonzero(row)
        return cls(nz.astype(np.int32), row[nz].astype(np.float32))

    def to_dict(self) -> dict[int, float]:
        return dict(zip(self.indices.tolist(), self.values.tolist(), strict=True))

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    def dot(self, other: SparseVector) -> float:
        common, i, j = np.intersect1d(self.indices, other.indices, assume_unique=True, return_indices=True)
        return float(np.dot(self.values[i], other.values[j])) if common.size else 0.0

    def top_k(self, k: int) -> SparseVector:
        """The ``k`` largest weights (all of them if there are fewer), still sorted by index."""
        if k >= self.nnz:
            return self
        keep = np.sort(np.argpartition(-self.values, k - 1)[:k])
        return SparseVector(self.indices[keep], self.values[keep])


class Corpus(Mapping[str, Document]):
    """Documents by id, in file order, in memory. Turns hits back into text.

    It is a ``sparsa.docstore.DocumentSource``, like the on-disk ``DocStore`` that serves large corpora:
    ``fetch``, ``identity`` and ``document_frequencies`` are that protocol. ``name``: the dataset's name,
    as its index manifests record it."""

    def __init__(self, documents: Iterable[Document], name: str | None = None):
        self._docs: dict[str, Document] = {}
        for doc in documents:
            self._docs[doc.id] = doc
        self.name = name
        self._identity: dict[str, Any] | None = None
        self._frequencies: Any = None

    def fetch(self, ids: Iterable[str]) -> list[Document | None]:
        """The documents of ``ids`` in that order; None for an id the corpus lacks."""
        return [self._docs.get(doc_id) for doc_id in ids]

    @property
    def identity(self) -> dict[str, Any]:
        """``sparsa.artifacts.corpus_identity`` of this corpus (what index manifests record)."""
        if self._identity is None:
            from sparsa.artifacts import corpus_identity

            self._identity = corpus_identity(self._docs, self.name)
        return self._identity

    def document_frequencies(self) -> Any:
        """Word -> number of documents holding it (``sparsa.docstore.document_words``), counted once."""
        if self._frequencies is None:
            from sparsa.docstore import count_document_frequencies

            self._frequencies = count_document_frequencies(d.full_text for d in self._docs.values())
        return self._frequencies

    def __getitem__(self, doc_id: str) -> Document:
        return self._docs[doc_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._docs)

    def __len__(self) -> int:
        return len(self._docs)

    @property
    def documents(self) -> list[Document]:
        return list(self._docs.values())

    def __repr__(self) -> str:
        return f"Corpus({len(self)} documents)"


@dataclass(slots=True)
class Run(Mapping[str, list[Hit]]):
    """Query id -> hits sorted by descending score (ties by doc id, for stable output)."""

    results: dict[str, list[Hit]] = field(default_factory=dict)
    name: str = "sparsa"

    def __post_init__(self) -> None:
        self.results = {qid: sort_hits(hits) for qid, hits in self.results.items()}

    def __getitem__(self, query_id: str) -> list[Hit]:
        return self.results[query_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def to_ir_measures(self) -> Iterator[Any]:
        """``ir_measures.ScoredDoc`` records, for ``ir_measures.calc_aggregate`` and friends."""
        from ir_measures import ScoredDoc

        for qid, hits in self.results.items():
            for hit in hits:
                yield ScoredDoc(qid, hit.doc_id, hit.score)

    @classmethod
    def read_trec(cls, path: str | Path) -> Run:
        from sparsa.data.trec import read_run

        return read_run(path)

    def write_trec(self, path: str | Path) -> None:
        from sparsa.data.trec import write_run

        write_run(self, path)


@dataclass(slots=True)
class Qrels(Mapping[str, dict[str, int]]):
    """Query id -> doc id -> graded relevance (0 or below means not relevant)."""

    judgements: dict[str, dict[str, int]] = field(default_factory=dict)

    def __getitem__(self, query_id: str) -> dict[str, int]:
        return self.judgements[query_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.judgements)

    def __len__(self) -> int:
        return len(self.judgements)

    def to_ir_measures(self) -> Iterator[Any]:
        from ir_measures import Qrel

        for qid, docs in self.judgements.items():
            for doc_id, grade in docs.items():
                yield Qrel(qid, doc_id, grade)

    @property
    def num_judgements(self) -> int:
        return sum(len(docs) for docs in self.judgements.values())

    @classmethod
    def read_trec(cls, path: str | Path) -> Qrels:
        from sparsa.data.trec import read_qrels

        return read_qrels(path)

    def write_trec(self, path: str | Path) -> None:
        from sparsa.data.trec import write_qrels

        write_qrels(self, path)


def sort_hits(hits: Sequence[Hit]) -> list[Hit]:
    return sorted(hits, key=lambda h: (-h.score, h.doc_id))
