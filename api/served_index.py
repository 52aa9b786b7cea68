"""One served index: opened and checked before serving (``open_served_index``), and the lock every
Java-backed search in the process takes (``SerialRetriever``). ``api/state.py`` keeps the served set;
loading and ``POST /indexes/swap`` both open an index through here, so a swap checks what loading checks.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsa.artifacts import hold_serving
from sparsa.errors import ConfigError
from sparsa.search import Retriever, open_retriever
from sparsa.types import Hit, Query, Run

logger = logging.getLogger(__name__)


@dataclass
class ServedIndex:
    retriever: str
    path: Path
    manifest: dict[str, Any]
    searcher: Retriever
    unchecked: bool = False  # its manifest records no corpus: hits are checked against the corpus instead

    def describe(self) -> dict[str, Any]:
        return {"retriever": self.retriever, "path": str(self.path), "kind": self.manifest.get("kind", "?"),
                "num_documents": self.manifest.get("num_documents"),
                "built_at": self.manifest.get("built_at"),
                "corpus": self.manifest.get("corpus")}


# pyjnius breaks when several Python threads call into the JVM at once (measured under 50 concurrent
# searches: IncompatibleClassChangeError and NullPointerException from Lucene): every Java-backed
# search in this process takes this lock.
JAVA_LOCK = threading.Lock()


class SerialRetriever(Retriever):
    """A retriever whose calls hold a lock (for Java-backed indexes)."""

    def __init__(self, retriever: Retriever, lock: threading.Lock):
        self.retriever, self.lock = retriever, lock

    def search(self, queries, k: int = 1000, show_progress: bool | None = None) -> Run:
        with self.lock:
            return self.retriever.search(queries, k=k, show_progress=show_progress)

    def search_text(self, text: str, k: int = 10) -> list[Hit]:
        with self.lock:
            return self.retriever.search_text(text, k=k)


def _uses_java(manifest: dict[str, Any]) -> bool:
    return manifest["kind"] == "bm25" or manifest.get("default_backend") == "lucene-impact"


def open_served_index(retriever: str, path: Path, verify: str, device: str | None = None) -> ServedIndex:
    """Check an index folder (its manifest, sizes, and with ``verify="sha256"`` every checksum) and open
    it."""
    from sparsa.artifacts import read_manifest

    started = time.perf_counter()
    manifest = read_manifest(path, verify=verify)  # IndexCorruptError names the bad file
    if manifest["kind"] != retriever:  # each base retriever is served from an index of that kind
        raise ConfigError(f"{path} is a {manifest['kind']!r} index; the {retriever} retriever needs a "
                          f"{retriever} index")
    searcher = open_retriever(path, verify="none", device=device)
    if _uses_java(manifest):
        searcher = SerialRetriever(searcher, JAVA_LOCK)
    # One query before serving fills lazy caches (encoder pooling tensors) while no request races for them.
    searcher.search([Query("warm-up", "warm up")], k=1, show_progress=False)
    logger.info("serving %s from %s (%s documents) after %.1f s", retriever, path,
                manifest.get("num_documents", "?"), time.perf_counter() - started)
    hold_serving(path)  # builds refuse to replace it while it is served here
    return ServedIndex(retriever, path, manifest, searcher)
