"""Index jobs: build any index kind, and open any index folder by its manifest.

Publishing and manifests are shared with every other artifact (``sparsa/artifacts.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsa.artifacts import read_manifest
from sparsa.registry import INDEX_BACKENDS
from sparsa.types import Corpus


def build_index(kind: str, corpus: Corpus, out: str | Path, show_progress: bool | None = None, **config: Any) -> Path:
    """Build an index of ``kind`` (see ``sparsa.registry.INDEX_BACKENDS``) over ``corpus`` at ``out``."""
    backend = INDEX_BACKENDS.get(kind)
    return backend.build(corpus, out, show_progress=show_progress, **config)


def open_index(path: str | Path, verify: str = "size") -> Any:
    """Open any sparsa index folder; its manifest says which backend reads it."""
    manifest = read_manifest(path, verify=verify)
    return INDEX_BACKENDS.get(manifest["kind"]).open(path)
