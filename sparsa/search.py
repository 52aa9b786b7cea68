"""Search: one ``Retriever`` interface over every index kind, and ``open_retriever``, the one way to open one.

A retriever turns query texts into ranked documents: ``search(queries, k) -> Run`` for a batch,
``search_text(text, k) -> list[Hit]`` for one query. BM25 indexes (``indexes/lucene.py``) analyse
query text themselves and are retrievers as opened. Learned-sparse and dense indexes are
:class:`VectorIndex` es, searched with query vectors (``search_vectors``); :class:`EncodedRetriever`
joins one with the query encoder its manifest names (rebuilt through ``sparsa.registry.ENCODERS``) and
refuses an encoder of another model. Fusion (``retrieval/fusion.py``) and the service's locked
retrievers are retrievers too.

The CLI, the service and the QA pipeline open indexes through :func:`open_retriever`. Nothing here
imports torch, Lucene or faiss at import time: index classes and encoders load through the registries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sparsa.artifacts import read_manifest
from sparsa.config import index_path, is_device_list, resolve_devices
from sparsa.errors import ConfigError
from sparsa.registry import INDEX_BACKENDS, build_encoder
from sparsa.types import Hit, Query, Run, sort_hits

_BATCH = 256  # queries encoded at once


@runtime_checkable
class Retriever(Protocol):
    """Query texts in, ranked documents out. Subclasses inherit ``search_text`` (one query through
    ``search``) unless they have a faster single-query path."""

    def search(self, queries: Sequence[Query], k: int = 1000, show_progress: bool | None = None) -> Run:
        """The top ``k`` documents for each query, as one run."""
        ...

    def search_text(self, text: str, k: int = 10) -> list[Hit]:
        """The top ``k`` documents for one query text, ordered as ``search`` orders a run's hits."""
        return self.search([Query("q", text)], k=k, show_progress=False).get("q", [])


class VectorIndex(Protocol):
    """An index searched with encoded queries (learned-sparse: ``SparseVector`` s; dense: ``float32[q, d]``).

    ``encoder_spec`` is the document encoder's ``spec()`` from the manifest, which rebuilds the
    matching query encoder; ``search_vectors`` returns one hit list per query vector."""

    encoder_spec: dict[str, Any]

    def search_vectors(self, queries: Any, k: int) -> list[list[Hit]]: ...


class EncodedRetriever(Retriever):
    """A vector index and its query encoder: encodes queries, then ``index.search_vectors``."""

    def __init__(self, encoder: Any, index: VectorIndex, name: str = ""):
        if encoder.spec()["config"]["model"] != index.encoder_spec["config"]["model"]:
            raise ConfigError(f"the query encoder ({encoder.config.model}) does not match the index's "
                              f"document encoder ({index.encoder_spec['config']['model']})")
        self.encoder, self.index = encoder, index
        self.name = name or index.encoder_spec["name"]

    @classmethod
    def for_index(cls, index: VectorIndex, **overrides: Any) -> EncodedRetriever:
        """The index with the encoder its manifest names; ``overrides``: run-time config fields (device)."""
        return cls(build_encoder(index.encoder_spec, **overrides), index)

    def search(self, queries: Sequence[Query], k: int = 1000, show_progress: bool | None = None) -> Run:
        from sparsa.progress import progress_bar

        results: dict[str, list[Hit]] = {}
        with progress_bar(total=len(queries), desc=f"searching ({self.name})", unit="query",
                          show=show_progress) as bar:
            for start in range(0, len(queries), _BATCH):
                batch = queries[start : start + _BATCH]
                vectors = self.encoder.encode_queries([q.text for q in batch], show_progress=False)
                for query, hits in zip(batch, self.index.search_vectors(vectors, k), strict=True):
                    results[query.id] = hits
                bar.update(len(batch))
        return Run(results, name=self.name)

    def search_text(self, text: str, k: int = 10) -> list[Hit]:
        return sort_hits(self.index.search_vectors(
            self.encoder.encode_queries([text], show_progress=False), k)[0])

    def __repr__(self) -> str:
        return f"EncodedRetriever({self.index!r}, query encoder {self.encoder.config.model})"


def open_retriever(name_or_path: str | Path, backend: str | None = None, verify: str = "size",
                   device: str | None = None, k1: float | None = None, b: float | None = None) -> Retriever:
    """Open an index as a retriever: a folder, or a name under ``$SPARSA_HOME/indexes``.

    The manifest (checked with ``verify``: "none", "size" or "sha256") says which index class reads
    the folder (``INDEX_BACKENDS``) and, for vector indexes, which encoder encoded its documents; that
    encoder, rebuilt, encodes the queries (on ``device``, default: as the manifest says); a splade
    index's exact backend searches on ``device`` too (default ``SPARSA_DEVICE``), and a list
    (``cuda:0,cuda:1``) or ``cuda:all`` shards it, one shard per GPU, the encoder on the first. ``backend``
    picks a learned-sparse index's search backend (default: the first it was built with); ``k1`` and
    ``b`` replace a BM25 index's search-time parameters (default: as built).
    """
    path = index_path(name_or_path)
    manifest = read_manifest(path, verify=verify)
    kind = manifest["kind"]
    options = {}
    if backend is not None:
        if kind != "splade":
            raise ConfigError(f"{path} is a {kind!r} index: only splade indexes have "
                              "search backends to choose")
        options["backend"] = backend
    bm25 = {name: value for name, value in (("k1", k1), ("b", b)) if value is not None}
    if bm25:
        if kind != "bm25":
            raise ConfigError(f"{path} is a {kind!r} index: k1 and b are BM25 parameters")
        options.update(bm25)
    if device is not None and kind == "splade":
        options["device"] = device
    elif device is not None and is_device_list(device):
        raise ConfigError(f"{path} is a {kind!r} index: a device list ({device}) shards only a splade "
                          "index's exact backend")
    index = INDEX_BACKENDS.get(kind).open(path, **options)
    if "encoder" not in manifest:
        return index  # a text index (BM25): it analyses query text itself
    if device is not None and is_device_list(device):
        device = resolve_devices(device)[0]  # queries are encoded once, on the first shard's device
    return EncodedRetriever.for_index(index, **({"device": device} if device is not None else {}))
