"""Index backends and indexing jobs. Backends load their libraries (pyserini, faiss...) lazily."""

from __future__ import annotations

if __name__ != "sparsa.indexes":  # a bare `import indexes` run from the repo root: see sparsa/toplevel.py
    from sparsa.toplevel import defer_to_installed

    defer_to_installed(__name__, __file__)

from sparsa.lazy import lazy_exports

_EXPORTS = {"build_index": "sparsa.indexes.jobs", "build_index_job": "sparsa.indexes.jobs",
            "job_encoder": "sparsa.indexes.jobs", "open_index": "sparsa.indexes.jobs"}

__all__ = ["build_index", "build_index_job", "job_encoder", "open_index"]

__getattr__ = lazy_exports("sparsa.indexes", _EXPORTS)
