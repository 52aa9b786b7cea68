"""Learned-sparse indexes: encode a corpus in resumable shards, then build search backends.

The index folder keeps the encoded documents (``vectors/``, a CSR matrix) and one structure per
backend (``exact`` needs none; ``seismic``; ``lucene-impact``). ``open`` picks a backend by name,
all behind ``search_vectors(vectors, k) -> list[list[Hit]]``. The manifest records the document encoder,
from which ``sparsa.search.open_retriever`` rebuilds the matching query encoder (``indexes`` never
imports ``retrieval``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from sparsa.artifacts import atomic_dir, read_manifest, write_manifest
from sparsa.config import is_device_list
from sparsa.errors import ConfigError, IndexCorruptError
from sparsa.indexes.shards import clear_job, run_in_shards, run_stream_in_shards
from sparsa.indexes.sparse_matrix import SparseMatrix
from sparsa.registry import SPARSE_BACKENDS
from sparsa.types import Corpus, Hit, SparseVector

logger = logging.getLogger(__name__)

SHARD_SIZE = 2048


class DocumentEncoder(Protocol):
    """What a build needs of an encoder: documents in, sparse vectors out, and how to rebuild it."""

    vocab_size: int

    def encode_documents(self, texts: Sequence[str],
                         show_progress: bool | None = None) -> list[SparseVector]: ...

    def spec(self) -> dict[str, Any]: ...


def encode_in_shards(
    corpus: Corpus, encoder: DocumentEncoder, work: Path, shard_size: int = SHARD_SIZE,
    show_progress: bool | None = None, threads: int | None = None,
) -> SparseMatrix:
    """Encode ``corpus`` shard by shard into ``work/shards`` (see ``indexes/shards.py``); resumable.

    An encoder with ``stream_documents(texts, threads=...)`` (``SpladeEncoder``: CSR blocks in order)
    encodes every missing shard in one stream; ``threads``: the CPU threads it may use (None: all cores).
    """
    stream = getattr(encoder, "stream_documents", None)
    if stream is not None:
        return SparseMatrix.concat(run_stream_in_shards(
            corpus, work, encoder.spec(), shard_size,
            lambda texts: stream(texts, threads=threads, show_progress=False),
            lambda docs, rows: SparseMatrix.from_rows([d.id for d in docs], rows, encoder.vocab_size),
            SparseMatrix.save, SparseMatrix.load, show_progress=show_progress))

    def encode(batch: list) -> SparseMatrix:
        vectors = encoder.encode_documents([d.full_text for d in batch], show_progress=False)
        return SparseMatrix.from_vectors([d.id for d in batch], vectors, encoder.vocab_size)

    parts = run_in_shards(corpus, work, encoder.spec(), shard_size, encode,
                          SparseMatrix.save, SparseMatrix.load, show_progress=show_progress)
    return SparseMatrix.concat(parts)


class LearnedSparseIndex:
    """An opened learned-sparse index with one active backend."""

    kind = "splade"

    def __init__(self, path: Path, manifest: dict, matrix: SparseMatrix, searcher: Any):
        self.path, self.manifest, self.matrix, self.searcher = path, manifest, matrix, searcher

    @classmethod
    def build(
        cls, corpus: Corpus, out: str | Path, encoder: DocumentEncoder | None = None,
        backends: Sequence[str] = ("exact",), show_progress: bool | None = None,
        shard_size: int = SHARD_SIZE, threads: int | None = None, **backend_config: dict,
    ) -> Path:
        """Encode and index ``corpus`` as one atomic, resumable job. ``backend_config``: per backend;
        ``threads``: CPU threads the encoding may use (None: all cores)."""
        if encoder is None:
            raise ConfigError("a learned-sparse index needs an encoder (e.g. sparsa.retrieval.SpladeEncoder)")
        for name in backends:
            SPARSE_BACKENDS.target(name)  # unknown names fail before any encoding
        started = time.perf_counter()
        with atomic_dir(out, resume=True) as work:
            matrix = encode_in_shards(corpus, encoder, work, shard_size, show_progress, threads)
            encoded_s = time.perf_counter() - started
            matrix.save(work / "vectors")
            settings = {}
            for name in backends:
                searcher = SPARSE_BACKENDS.get(name).build(matrix, work, backend_config.get(name, {}))
                settings[name] = searcher.settings()
            clear_job(work)  # the job's checkpoints; the index keeps vectors/
            write_manifest(
                work, cls.kind, {"backends": settings}, encoder=encoder.spec(), default_backend=backends[0],
                num_documents=len(matrix), nnz=matrix.nnz, vocab_size=matrix.dim,
                encode_seconds=round(encoded_s, 2), build_seconds=round(time.perf_counter() - started, 2),
            )
        logger.info("built %s over %d documents in %.1f s", list(backends), len(matrix),
                    time.perf_counter() - started)
        return Path(out)

    @classmethod
    def open(cls, path: str | Path, backend: str | None = None, device: str | None = None
             ) -> LearnedSparseIndex:
        """``device``: where the exact backend searches (default ``SPARSA_DEVICE``); a list
        (``cuda:0,cuda:1``) or ``cuda:all`` shards it, one shard per device. Other backends run on
        the CPU and ignore a single device."""
        path = Path(path).expanduser()
        manifest = read_manifest(path)
        built = manifest["config"]["backends"]
        name = backend or manifest["default_backend"]
        if name not in built:
            raise ConfigError(f"{path} has no {name!r} backend; built: {', '.join(built)}")
        matrix = SparseMatrix.load(path / "vectors")
        if len(matrix) != manifest["num_documents"]:
            raise IndexCorruptError(f"{path}: {len(matrix)} stored vectors, manifest says "
                                    f"{manifest['num_documents']}")
        backend_class = SPARSE_BACKENDS.get(name)
        takes = device is not None and getattr(backend_class, "takes_device", False)
        if device is not None and not takes and is_device_list(device):
            raise ConfigError(f"device {device!r}: the {name} backend searches on the CPU; only the exact "
                              "backend shards over several devices")
        searcher = backend_class.open(path, matrix, built[name], **({"device": device} if takes else {}))
        return cls(path, manifest, matrix, searcher)

    @property
    def encoder_spec(self) -> dict[str, Any]:
        return self.manifest["encoder"]

    @property
    def num_documents(self) -> int:
        return len(self.matrix)

    def search_vectors(self, queries: Sequence[SparseVector], k: int) -> list[list[Hit]]:
        """Top-``k`` documents by dot product for each query vector; an empty vector finds nothing."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        nonempty = [i for i, q in enumerate(queries) if q.nnz]
        found = self.searcher.search_vectors([queries[i] for i in nonempty], k) if nonempty else []
        results: list[list[Hit]] = [[] for _ in queries]
        for i, hits in zip(nonempty, found, strict=True):
            results[i] = hits
        return results

    def __repr__(self) -> str:
        return (f"LearnedSparseIndex({str(self.path)!r}, {self.num_documents} documents, "
                f"backend={self.searcher.name})")

