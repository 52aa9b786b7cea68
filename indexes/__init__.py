"""Index backends and indexing jobs. Backends load their libraries (pyserini, faiss...) lazily."""

from __future__ import annotations

from sparsa.indexes.jobs import build_index, open_index

__all__ = ["build_index", "open_index"]
