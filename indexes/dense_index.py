"""Dense indexes: documents encoded once into stored vectors, plus one faiss structure chosen by name.

Folder layout (``sparsa.json`` written last, with every file's size and sha256):

- ``segments/NNNNNN/{vectors.npy,doc_ids.json}``: the encoded documents. A build's resumable shards
  (``indexes/shards.py``) become the segments as they are; each ``add`` appends segments.
- ``<structure>.faiss``: the search structure (``hnsw``, ``ivfpq``; ``flat`` needs none).

``add`` publishes a new folder atomically: unchanged segments are hard-linked, the new documents
are encoded into new segments, and the faiss structure is extended (IVF-PQ keeps its trained
quantizers, so heavy additions drift from the data it was trained on: rebuild then). The manifest
records the document encoder's ``spec()``, from which ``sparsa.search.open_retriever`` rebuilds the query
encoder (``indexes`` never imports ``retrieval``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sparsa.artifacts import atomic_dir, read_manifest, write_manifest
from sparsa.errors import ConfigError, IndexCorruptError, require
from sparsa.indexes.shards import clear_job, run_in_shards
from sparsa.registry import DENSE_BACKENDS
from sparsa.types import Corpus, Hit

logger = logging.getLogger(__name__)

SHARD_SIZE = 4096
_SEGMENTS = "segments"


class DenseDocumentEncoder(Protocol):
    def encode_documents(self, texts: Sequence[str], show_progress: bool | None = None) -> np.ndarray: ...

    def spec(self) -> dict[str, Any]: ...


def save_segment(part: tuple[list[str], np.ndarray], folder: Path) -> None:
    doc_ids, vectors = part
    folder.mkdir(parents=True)
    np.save(folder / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
    (folder / "doc_ids.json").write_text(json.dumps(doc_ids))


def load_segment(folder: Path) -> tuple[list[str], np.ndarray]:
    try:
        return json.loads((folder / "doc_ids.json").read_text()), np.load(folder / "vectors.npy")
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"{folder}: unreadable segment ({exc}); rebuild the index") from None


def _portable_spec(encoder: DenseDocumentEncoder) -> dict[str, Any]:
    """The encoder's spec with the device left to whoever opens the index."""
    spec = encoder.spec()
    return {**spec, "config": {**spec["config"], "device": "auto"}}


def _encode_segments(corpus: Corpus, encoder: DenseDocumentEncoder, work: Path, shard_size: int,
                     show_progress: bool | None) -> list[tuple[list[str], np.ndarray]]:
    def encode(batch: list) -> tuple[list[str], np.ndarray]:
        return ([d.id for d in batch],
                encoder.encode_documents([d.full_text for d in batch], show_progress=False))

    return run_in_shards(corpus, work, _portable_spec(encoder), shard_size, encode,
                         save_segment, load_segment, fmt="dense", show_progress=show_progress)


class DenseIndex:
    """An opened dense index: stored vectors, doc ids and the searcher chosen for this machine."""

    kind = "dense"

    def __init__(self, path: Path, manifest: dict, doc_ids: list[str], vectors: np.ndarray, searcher: Any):
        self.path, self.manifest, self.doc_ids, self.vectors, self.searcher = (path, manifest, doc_ids,
                                                                               vectors, searcher)

    @classmethod
    def build(
        cls, corpus: Corpus, out: str | Path, encoder: DenseDocumentEncoder | None = None,
        structure: str = "flat",
        structure_config: dict | None = None, show_progress: bool | None = None, shard_size: int = SHARD_SIZE,
    ) -> Path:
        """Encode ``corpus`` (resumable shards) and build ``structure`` over it, as one atomic job."""
        if encoder is None:
            raise ConfigError("a dense index needs an encoder (e.g. sparsa.retrieval.DenseEncoder)")
        structure_cls = DENSE_BACKENDS.get(structure)  # unknown names fail before any encoding
        if structure != "flat":
            require("faiss", "faiss")  # so does a missing faiss
        _check_unique([d.id for d in corpus.documents])
        started = time.perf_counter()
        with atomic_dir(out, resume=True) as work:
            parts = _encode_segments(corpus, encoder, work, shard_size, show_progress)
            encoded_s = time.perf_counter() - started
            os.replace(work / "shards", work / _SEGMENTS)
            clear_job(work)
            vectors = np.concatenate([v for _, v in parts]) if parts else np.zeros((0, 0), np.float32)
            built = structure_cls.build(vectors, structure_config)
            built.save(work)
            _write(work, _portable_spec(encoder), built, len(vectors), vectors.shape[1],
                   encode_seconds=round(encoded_s, 2), build_seconds=round(time.perf_counter() - started, 2))
        return Path(out)

    @classmethod
    def build_from_vectors(
        cls, doc_ids: Sequence[str], vectors: np.ndarray, out: str | Path, encoder_spec: dict[str, Any],
        structure: str = "flat", structure_config: dict | None = None, shard_size: int = SHARD_SIZE,
    ) -> Path:
        """An index over vectors encoded elsewhere (e.g. on a GPU machine) by the encoder ``encoder_spec``."""
        if len(doc_ids) != len(vectors):
            raise ConfigError(f"{len(doc_ids)} doc ids for {len(vectors)} vectors")
        _check_unique(list(doc_ids))
        structure_cls = DENSE_BACKENDS.get(structure)
        started = time.perf_counter()
        with atomic_dir(out) as work:
            for number, start in enumerate(range(0, len(doc_ids), shard_size)):
                stop = start + shard_size
                save_segment((list(doc_ids[start:stop]), vectors[start:stop]),
                             work / _SEGMENTS / f"{number:06d}")
            built = structure_cls.build(np.asarray(vectors, dtype=np.float32), structure_config)
            built.save(work)
            _write(work, encoder_spec, built, len(vectors), vectors.shape[1],
                   build_seconds=round(time.perf_counter() - started, 2))
        return Path(out)

    @classmethod
    def open(cls, path: str | Path, device: str = "auto") -> DenseIndex:
        from sparsa.indexes.vector_search import open_searcher

        path = Path(path).expanduser()
        manifest = read_manifest(path, kind=cls.kind)
        doc_ids, vectors = _read_segments(path)
        if len(doc_ids) != manifest["num_documents"]:
            raise IndexCorruptError(f"{path}: {len(doc_ids)} stored vectors, manifest says "
                                    f"{manifest['num_documents']}")
        config = manifest["config"]
        searcher = open_searcher(DENSE_BACKENDS.get(config["structure"]), path,
                                 config["settings"], vectors, device)
        return cls(path, manifest, doc_ids, vectors, searcher)

    def add(self, corpus: Corpus, encoder: DenseDocumentEncoder, show_progress: bool | None = None,
            shard_size: int = SHARD_SIZE) -> DenseIndex:
        """Encode ``corpus`` and publish the index with those documents added; returns the reopened index."""
        if _portable_spec(encoder) != self.encoder_spec:
            raise ConfigError(f"{self.path} was encoded by {self.encoder_spec}, not {encoder.spec()}")
        _check_unique(self.doc_ids + [d.id for d in corpus.documents])
        config = self.manifest["config"]
        structure_cls = DENSE_BACKENDS.get(config["structure"])
        started = time.perf_counter()
        with atomic_dir(self.path, resume=True) as work:
            parts = _encode_segments(corpus, encoder, work, shard_size, show_progress)
            existing = sorted((self.path / _SEGMENTS).iterdir())
            for old in existing:  # segments never change once written: link, do not copy
                (work / _SEGMENTS / old.name).mkdir(parents=True, exist_ok=True)
                for file in old.iterdir():
                    target = work / _SEGMENTS / old.name / file.name
                    if not target.exists():
                        os.link(file, target)
            for number, shard in enumerate(sorted((work / "shards").iterdir())):
                os.replace(shard, work / _SEGMENTS / f"{len(existing) + number:06d}")
            clear_job(work)
            added = np.concatenate([v for _, v in parts]) if parts else np.zeros((0, self.dim), np.float32)
            structure = structure_cls.load(self.path, config["settings"], self.vectors) \
                if structure_cls.name != "flat" else structure_cls.build(added, config["settings"])
            structure.add(added)
            structure.save(work)
            _write(work, self.encoder_spec, structure, len(self.doc_ids) + len(added), self.dim,
                   added_seconds=round(time.perf_counter() - started, 2))
        logger.info("added %d documents to %s", len(added), self.path)
        return DenseIndex.open(self.path)

    @property
    def encoder_spec(self) -> dict[str, Any]:
        return self.manifest["encoder"]

    @property
    def num_documents(self) -> int:
        return len(self.doc_ids)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` documents by inner product for each row of ``queries`` (``float32[q, d]``)."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise ConfigError(f"query vectors have {queries.shape[1]} dimensions, the index {self.dim}")
        if not len(queries) or not self.num_documents:
            return [[] for _ in queries]
        scores, rows = self.searcher.search_vectors(queries, min(k, self.num_documents))
        return [[Hit(self.doc_ids[r], float(s)) for r, s in zip(row.tolist(), score.tolist()) if r >= 0]
                for row, score in zip(rows, scores, strict=True)]

    def __repr__(self) -> str:
        return (f"DenseIndex({str(self.path)!r}, {self.num_documents} documents, "
                f"{self.manifest['config']['structure']}, searcher={type(self.searcher).__name__})")


def _check_unique(doc_ids: list[str]) -> None:
    if len(set(doc_ids)) != len(doc_ids):
        seen: set[str] = set()
        dup = next(d for d in doc_ids if d in seen or seen.add(d))
        raise ConfigError(f"document id {dup!r} appears more than once")


def _read_segments(path: Path) -> tuple[list[str], np.ndarray]:
    folder = path / _SEGMENTS
    parts = [load_segment(s) for s in sorted(folder.iterdir())] if folder.is_dir() else []
    if not parts:
        return [], np.zeros((0, 0), np.float32)
    return [d for ids, _ in parts for d in ids], np.concatenate([v for _, v in parts])


def _write(work: Path, encoder_spec: dict, structure: Any, n: int, dim: int, **extra: Any) -> None:
    write_manifest(work, DenseIndex.kind, {"structure": structure.name, "settings": structure.config},
                   encoder=encoder_spec, num_documents=n, dim=dim, **extra)
