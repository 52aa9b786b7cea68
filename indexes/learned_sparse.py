"""Learned-sparse indexes: encode a corpus in resumable shards, then build search backends.

The index folder keeps the encoded documents (``vectors/``, a CSR matrix) and one structure per
backend (``exact`` needs none; ``seismic``; ``lucene-impact``). ``open`` picks a backend by name,
all behind ``search(vectors, k) -> list[list[Hit]]``. The manifest records the document encoder
so the caller can rebuild the matching query encoder (``indexes`` never imports ``retrieval``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from sparsa.errors import ConfigError, IndexCorruptError
from sparsa.artifacts import atomic_dir, read_manifest, write_manifest
from sparsa.indexes.sparse_matrix import SparseMatrix
from sparsa.progress import progress_bar
from sparsa.registry import SPARSE_BACKENDS
from sparsa.types import Corpus, Hit, SparseVector

logger = logging.getLogger(__name__)

SHARD_SIZE = 2048


class DocumentEncoder(Protocol):
    """What a build needs of an encoder: documents in, sparse vectors out, and how to rebuild it."""

    vocab_size: int

    def encode_documents(self, texts: Sequence[str], show_progress: bool | None = None) -> list[SparseVector]: ...

    def spec(self) -> dict[str, Any]: ...


def _fingerprint(corpus: Corpus, encoder_spec: dict, shard_size: int) -> str:
    digest = hashlib.sha256(json.dumps([encoder_spec, shard_size], sort_keys=True).encode())
    for doc in corpus.documents:
        digest.update(doc.id.encode() + b"\0" + doc.full_text.encode() + b"\0")
    return digest.hexdigest()


def encode_in_shards(
    corpus: Corpus, encoder: DocumentEncoder, work: Path, shard_size: int = SHARD_SIZE,
    show_progress: bool | None = None,
) -> SparseMatrix:
    """Encode ``corpus`` shard by shard into ``work/shards``; shards already there are reused.

    A shard is written to a temporary name and renamed, so a killed job never leaves a partial
    shard; ``job.json`` ties the shards to this corpus and encoder, so a different job restarts.
    """
    spec = encoder.spec()
    fingerprint = _fingerprint(corpus, spec, shard_size)
    job_file, shards = work / "job.json", work / "shards"
    if job_file.is_file() and json.loads(job_file.read_text()).get("fingerprint") != fingerprint:
        logger.info("the interrupted build was for other documents or another encoder: starting over")
        for old in shards.glob("*"):
            old.unlink()
    shards.mkdir(exist_ok=True)
    job_file.write_text(json.dumps({"fingerprint": fingerprint, "encoder": spec}))

    docs = corpus.documents
    parts: list[SparseMatrix] = []
    with progress_bar(total=len(docs), desc="encoding documents", unit="doc", show=show_progress) as bar:
        for number, start in enumerate(range(0, len(docs), shard_size)):
            batch = docs[start : start + shard_size]
            folder = shards / f"{number:06d}"
            if (folder / "doc_ids.json").is_file():
                parts.append(SparseMatrix.load(folder))
            else:
                vectors = encoder.encode_documents([d.full_text for d in batch], show_progress=False)
                part = SparseMatrix.from_vectors([d.id for d in batch], vectors, encoder.vocab_size)
                tmp = shards / f".{number:06d}.tmp"
                part.save(tmp)
                tmp.rename(folder)
                parts.append(part)
            bar.update(len(batch))
    return SparseMatrix.concat(parts)


class LearnedSparseIndex:
    """An opened learned-sparse index with one active backend."""

    kind = "sparse"

    def __init__(self, path: Path, manifest: dict, matrix: SparseMatrix, searcher: Any):
        self.path, self.manifest, self.matrix, self.searcher = path, manifest, matrix, searcher

    @classmethod
    def build(
        cls, corpus: Corpus, out: str | Path, encoder: DocumentEncoder | None = None,
        backends: Sequence[str] = ("exact",), show_progress: bool | None = None,
        shard_size: int = SHARD_SIZE, **backend_config: dict,
    ) -> Path:
        """Encode and index ``corpus`` as one atomic, resumable job. ``backend_config``: per backend."""
        if encoder is None:
            raise ConfigError("a learned-sparse index needs an encoder (e.g. sparsa.retrieval.SpladeEncoder)")
        for name in backends:
            SPARSE_BACKENDS.target(name)  # unknown names fail before any encoding
        started = time.perf_counter()
        with atomic_dir(out, resume=True) as work:
            matrix = encode_in_shards(corpus, encoder, work, shard_size, show_progress)
            encoded_s = time.perf_counter() - started
            matrix.save(work / "vectors")
            settings = {}
            for name in backends:
                searcher = SPARSE_BACKENDS.get(name).build(matrix, work, backend_config.get(name, {}))
                settings[name] = searcher.settings()
            shutil.rmtree(work / "shards")  # the job's checkpoints; the index keeps vectors/
            (work / "job.json").unlink()
            write_manifest(
                work, cls.kind, {"backends": settings}, encoder=encoder.spec(), default_backend=backends[0],
                num_documents=len(matrix), nnz=matrix.nnz, vocab_size=matrix.dim,
                encode_seconds=round(encoded_s, 2), build_seconds=round(time.perf_counter() - started, 2),
            )
        logger.info("built %s over %d documents in %.1f s", list(backends), len(matrix), time.perf_counter() - started)
        return Path(out)

    @classmethod
    def open(cls, path: str | Path, backend: str | None = None) -> LearnedSparseIndex:
        path = Path(path).expanduser()
        manifest = read_manifest(path)
        built = manifest["config"]["backends"]
        name = backend or manifest["default_backend"]
        if name not in built:
            raise ConfigError(f"{path} has no {name!r} backend; built: {', '.join(built)}")
        matrix = SparseMatrix.load(path / "vectors")
        if len(matrix) != manifest["num_documents"]:
            raise IndexCorruptError(f"{path}: {len(matrix)} stored vectors, manifest says {manifest['num_documents']}")
        searcher = SPARSE_BACKENDS.get(name).open(path, matrix, built[name])
        return cls(path, manifest, matrix, searcher)

    @property
    def encoder_spec(self) -> dict[str, Any]:
        return self.manifest["encoder"]

    @property
    def num_documents(self) -> int:
        return len(self.matrix)

    def search(self, queries: Sequence[SparseVector], k: int) -> list[list[Hit]]:
        """Top-``k`` documents by dot product for each query vector; an empty vector finds nothing."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        nonempty = [i for i, q in enumerate(queries) if q.nnz]
        found = self.searcher.search([queries[i] for i in nonempty], k) if nonempty else []
        results: list[list[Hit]] = [[] for _ in queries]
        for i, hits in zip(nonempty, found, strict=True):
            results[i] = hits
        return results

    def __repr__(self) -> str:
        return (f"LearnedSparseIndex({str(self.path)!r}, {self.num_documents} documents, "
                f"backend={self.searcher.name})")

