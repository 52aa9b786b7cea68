"""Joining a query encoder and an index: ``EncodedRetriever.retrieve(queries, k) -> Run``.

``retrieval`` never imports ``indexes``: the index arrives as any object with ``search(vectors, k)``
and an ``encoder_spec`` (what its manifest says encoded the documents); the matching query
encoder is rebuilt from that spec through the encoder registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sparsa.errors import ConfigError
from sparsa.progress import progress_bar
from sparsa.registry import build_encoder
from sparsa.types import Hit, Query, Run, SparseVector

_BATCH = 256


class VectorIndex(Protocol):
    encoder_spec: dict[str, Any]

    def search(self, queries: Sequence[SparseVector], k: int) -> list[list[Hit]]: ...


encoder_from_spec = build_encoder  # the name this module has always exported


class EncodedRetriever:
    """Encodes queries with the index's own encoder, then searches the index."""

    def __init__(self, encoder: Any, index: VectorIndex, name: str = ""):
        if encoder.spec()["config"]["model"] != index.encoder_spec["config"]["model"]:
            raise ConfigError(f"the query encoder ({encoder.config.model}) does not match the index's "
                              f"document encoder ({index.encoder_spec['config']['model']})")
        self.encoder, self.index = encoder, index
        self.name = name or index.encoder_spec["name"]

    @classmethod
    def for_index(cls, index: VectorIndex, **overrides: Any) -> EncodedRetriever:
        return cls(encoder_from_spec(index.encoder_spec, **overrides), index)

    def retrieve(self, queries: Sequence[Query], k: int = 1000, show_progress: bool | None = None) -> Run:
        results: dict[str, list[Hit]] = {}
        with progress_bar(total=len(queries), desc=f"searching ({self.name})", unit="query", show=show_progress) as bar:
            for start in range(0, len(queries), _BATCH):
                batch = queries[start : start + _BATCH]
                vectors = self.encoder.encode_queries([q.text for q in batch], show_progress=False)
                for query, hits in zip(batch, self.index.search(vectors, k), strict=True):
                    results[query.id] = hits
                bar.update(len(batch))
        return Run(results, name=self.name)


def as_retriever(index: Any, **encoder_overrides: Any) -> Any:
    """Any opened index as a ``Retriever``: text indexes already are; vector indexes get their encoder."""
    if hasattr(index, "retrieve"):
        return index
    if hasattr(index, "encoder_spec"):
        return EncodedRetriever.for_index(index, **encoder_overrides)
    raise ConfigError(f"{type(index).__name__} can neither retrieve nor name its query encoder")
