"""The small interfaces every implementation meets (structural: no inheritance needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from sparsa.types import Document, Hit, Query, Run, SparseVector


@runtime_checkable
class Retriever(Protocol):
    """Anything that turns queries into a ranked run: an opened index, a fusion, a pipeline."""

    def retrieve(self, queries: Sequence[Query], k: int = 1000, show_progress: bool | None = None) -> Run: ...


@runtime_checkable
class Index(Protocol):
    """An opened index folder. Building goes through ``sparsa.indexes.build_index``."""

    @classmethod
    def open(cls, path: str | Path) -> Index: ...

    def retrieve(self, queries: Sequence[Query], k: int = 1000, show_progress: bool | None = None) -> Run: ...


class SparseEncoder(Protocol):
    def encode_queries(
        self, texts: Sequence[str], batch_size: int = 32, show_progress: bool | None = None
    ) -> list[SparseVector]: ...

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 32, show_progress: bool | None = None
    ) -> list[SparseVector]: ...


class VectorSearcher(Protocol):
    """A backend over encoded documents: sparse or dense query vectors in, hits out."""

    def search(self, queries: Sequence[SparseVector], k: int) -> list[list[Hit]]: ...


class Reranker(Protocol):
    def rerank(self, query: Query, candidates: Sequence[Document], top_k: int | None = None) -> list[Hit]: ...
