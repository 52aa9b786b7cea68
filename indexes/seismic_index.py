"""Approximate learned-sparse search on CPU with Seismic (``pyseismic-lsr``).

Seismic prunes each term's posting list, clusters it into blocks with summary vectors, and skips
blocks whose summary cannot beat the current top-k (Bruch et al., SIGIR 2024). Terms are passed
as the decimal string of the term id. Its recall against :class:`ExactSparseSearcher` is what
``bench/bench_lsr_engines.py`` reports.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sparsa.errors import ConfigError, IndexCorruptError, require
from sparsa.indexes.sparse_matrix import SparseMatrix
from sparsa.types import Hit, SparseVector

logger = logging.getLogger(__name__)

FILE = "seismic"  # Seismic appends ".index.seismic"


@dataclass(frozen=True, slots=True)
class SeismicConfig:
    """Build and search knobs; defaults follow Seismic's own for ~10^4-10^6 documents."""

    n_postings: int = 4000
    centroid_fraction: float = 0.1
    summary_energy: float = 0.4
    query_cut: int = 20
    heap_factor: float = 0.8
    threads: int = 2  # search
    build_threads: int = 0  # 0: all cores

    def __post_init__(self) -> None:
        if self.n_postings < 1 or not 0 < self.centroid_fraction <= 1 or not 0 < self.heap_factor <= 1:
            raise ConfigError(f"invalid Seismic settings: {self}")


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _terms(indices: np.ndarray) -> np.ndarray:
    seismic = require("seismic", "seismic")
    return indices.astype(str).astype(seismic.get_seismic_string())


class SeismicSearcher:
    name = "seismic"

    def __init__(self, index: object, config: SeismicConfig):
        self._index = index
        self.config = config

    @classmethod
    def build(cls, matrix: SparseMatrix, folder: Path, config: dict) -> SeismicSearcher:
        seismic = require("seismic", "seismic")
        config = SeismicConfig(**config)
        dataset = seismic.SeismicDataset()
        for i, doc_id in enumerate(matrix.doc_ids):
            row = matrix.row(i)
            if row.nnz:
                dataset.add_document(doc_id, _terms(row.indices), row.values.astype(np.float32))
        with _stdout_to_stderr():  # Seismic reports progress on stdout, which sparsa keeps for results
            index = seismic.SeismicIndex.build_from_dataset(
                dataset, n_postings=config.n_postings, centroid_fraction=config.centroid_fraction,
                summary_energy=config.summary_energy, num_threads=config.build_threads,
            )
            index.save(str(folder / FILE))
        return cls(index, config)

    @classmethod
    def open(cls, folder: Path, matrix: SparseMatrix, config: dict) -> SeismicSearcher:
        seismic = require("seismic", "seismic")
        path = folder / f"{FILE}.index.seismic"
        try:
            index = seismic.SeismicIndex.load(str(path))
        except (OSError, ValueError) as exc:
            raise IndexCorruptError(f"{path}: Seismic could not load it ({exc}); rebuild the index") from None
        return cls(index, SeismicConfig(**config))

    def settings(self) -> dict:
        return asdict(self.config)

    def search_vectors(self, queries: Sequence[SparseVector], k: int) -> list[list[Hit]]:
        if not queries:
            return []
        ids = np.array([str(i) for i in range(len(queries))], dtype=_terms(np.zeros(1, np.int32)).dtype)
        found = self._index.batch_search(
            ids, [_terms(q.indices) for q in queries], [q.values.astype(np.float32) for q in queries],
            k=k, query_cut=self.config.query_cut, heap_factor=self.config.heap_factor,
            num_threads=self.config.threads,
        )
        # Results come back grouped per query but not in query order: place them by query id.
        results: list[list[Hit]] = [[] for _ in queries]
        for hits in found:
            for qid, score, doc_id in hits:
                results[int(qid)].append(Hit(doc_id, float(score)))
        return results
