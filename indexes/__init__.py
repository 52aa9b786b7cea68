"""Index backends and indexing jobs. Backends load their libraries (pyserini, faiss...) lazily."""

from __future__ import annotations

from sparsa.indexes.jobs import atomic_index_dir, build_index, open_index, read_manifest

__all__ = ["atomic_index_dir", "build_index", "open_index", "read_manifest"]
