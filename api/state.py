"""What a service has loaded (indexes, corpus, reranker, QA pipeline) and the library calls on it.

Everything goes through the library's public functions: ``sparsa.search.open_retriever`` for
search, ``RERANKERS`` for reranking, ``rag.pipeline.load_pipeline`` for QA. An index that fails its
manifest check is refused with the library's message and never served; swapping an index opens
and checks the new one first, so a bad swap leaves the old index serving.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsa.api.settings import BASE_RETRIEVERS, ServiceConfig
from sparsa.errors import ConfigError, SparsaError
from sparsa.search import Retriever, open_retriever
from sparsa.types import Document, Hit, Query, Run, sort_hits

logger = logging.getLogger(__name__)


class NotConfiguredError(SparsaError):
    """The request needs something this server does not serve: 400 for a retriever or the reranker
    (the client can choose another), 503 for QA (the service itself lacks it)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class NotReadyError(SparsaError):
    """The server is still loading."""


@dataclass
class ServedIndex:
    retriever: str
    path: Path
    manifest: dict[str, Any]
    searcher: Retriever

    def describe(self) -> dict[str, Any]:
        return {"retriever": self.retriever, "path": str(self.path), "kind": self.manifest.get("kind", "?"),
                "num_documents": self.manifest.get("num_documents"), "built_at": self.manifest.get("built_at")}


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


def open_served_index(retriever: str, path: Path, verify: str) -> ServedIndex:
    """Check an index folder (its manifest, sizes, and with ``verify="sha256"`` every checksum) and open it."""
    from sparsa.artifacts import read_manifest

    started = time.perf_counter()
    manifest = read_manifest(path, verify=verify)  # IndexCorruptError names the bad file
    if manifest["kind"] != retriever:  # each base retriever is served from an index of that kind
        raise ConfigError(f"{path} is a {manifest['kind']!r} index; the {retriever} retriever needs a "
                          f"{retriever} index")
    searcher = open_retriever(path, verify="none")
    if _uses_java(manifest):
        searcher = SerialRetriever(searcher, JAVA_LOCK)
    # One query before serving fills lazy caches (encoder pooling tensors) while no request races for them.
    searcher.search([Query("warm-up", "warm up")], k=1, show_progress=False)
    logger.info("serving %s from %s (%s documents) after %.1f s", retriever, path,
                manifest.get("num_documents", "?"), time.perf_counter() - started)
    return ServedIndex(retriever, path, manifest, searcher)


def fusion_available() -> bool:
    return importlib.util.find_spec("sparsa.retrieval.fusion") is not None


class ServiceState:
    """The loaded resources of one service; all methods are blocking (handlers run them in threads)."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.indexes: dict[str, ServedIndex] = {}
        self.corpus = None
        self.reranker: Any = None
        self.pipeline: Any = None
        self.qa_retriever: str | None = None  # the served index the QA pipeline retrieves from
        self.problems: list[str] = []
        self.loaded = threading.Event()
        self._swap_lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------------

    def load(self, strict: bool = False) -> ServiceState:
        """Load everything configured. ``strict``: the first failure raises (``sparsa serve``);
        otherwise failures are recorded in ``problems`` and the service is not ready."""
        steps = [(f"index {name}", lambda n=name, p=path: self._load_index(n, p))
                 for name, path in self.config.indexes.items()]
        steps += [("corpus", self._load_corpus)] if self.config.dataset else []
        steps += [("reranker", self._load_reranker)] if self.config.reranker else []
        steps += [("QA pipeline", self._load_pipeline)] if self.config.qa_model else []
        for what, step in steps:
            try:
                step()
            except (SparsaError, OSError) as exc:
                if strict:
                    raise
                logger.error("could not load %s: %s", what, exc)
                self.problems.append(f"{what}: {exc}")
        self.loaded.set()
        return self

    def _load_index(self, retriever: str, path: Path) -> None:
        self.indexes[retriever] = open_served_index(retriever, Path(path), self.config.verify)

    def _load_corpus(self) -> None:
        from sparsa.data import load_corpus

        self.corpus = load_corpus(self.config.dataset)

    def _load_reranker(self) -> None:
        from sparsa.registry import RERANKERS

        self.reranker = RERANKERS.get(self.config.reranker).load(self.config.reranker_model)

    def _load_pipeline(self) -> None:
        """The QA pipeline over the served retriever and corpus (no second index or corpus in memory)."""
        if importlib.util.find_spec("sparsa.rag.pipeline") is None:
            raise NotConfiguredError("QA not configured: this install has no sparsa.rag.pipeline", status=503)
        from sparsa.rag.pipeline import QAPipeline
        from sparsa.rag.reader import Reader

        self.qa_retriever = "bm25" if "bm25" in self.indexes else next(iter(self.indexes), None)
        index = self.indexes.get(self.qa_retriever) if self.qa_retriever else None
        if index is None or self.corpus is None:
            raise ConfigError("QA needs a served index and its dataset (the passages it reads)")
        router = None
        if self.config.qa_router is not None:
            from sparsa.rag.routing import Router

            router = Router.load(self.config.qa_router, corpus=self.corpus)
        self.pipeline = QAPipeline(Reader.load(self.config.qa_model), retriever=index.searcher, corpus=self.corpus,
                                   router=router, k=self.config.qa_k)

    @property
    def ready(self) -> bool:
        return self.loaded.is_set() and not self.problems

    def health(self) -> dict[str, Any]:
        problems = list(self.problems) if self.loaded.is_set() else ["loading"]
        return {"ready": self.ready, "indexes": {n: str(s.path) for n, s in self.indexes.items()},
                "reranker": self.config.reranker if self.reranker is not None else None,
                "qa": self.pipeline is not None, "problems": problems}

    def _require_loaded(self) -> None:
        if not self.loaded.is_set():
            raise NotReadyError("the server is still loading its indexes and models; retry shortly")

    # -- serving ---------------------------------------------------------------------------------

    def search(self, text: str, retriever: str, k: int) -> list[Hit]:
        self._require_loaded()
        if retriever == "hybrid":
            return self._hybrid(text, k)
        served = self.indexes.get(retriever)
        if served is None:
            raise NotConfiguredError(f"retriever {retriever!r} is not configured on this server; "
                                     f"served: {', '.join(self.indexes) or 'none'}")
        return served.searcher.search_text(text, k=k)

    def _hybrid(self, text: str, k: int) -> list[Hit]:
        parts = [self.indexes[name] for name in BASE_RETRIEVERS if name in self.indexes]
        if len(parts) < 2 or not fusion_available():
            raise NotConfiguredError("retriever 'hybrid' is not configured on this server: it fuses two or "
                                     "more served indexes with sparsa.retrieval.fusion; served: "
                                     f"{', '.join(self.indexes) or 'none'}")
        from sparsa.retrieval.fusion import HybridRetriever

        # RRF over each served retriever's top max(k, 100): deep enough for the fused top k.
        hybrid = HybridRetriever([served.searcher for served in parts], method="rrf", depth=max(k, 100))
        return hybrid.search_text(text, k=k)

    def documents(self, doc_ids: list[str]) -> list[Document]:
        if self.corpus is None:
            raise NotConfiguredError("this server has no corpus to look document ids up in; send passages")
        missing = [d for d in doc_ids if d not in self.corpus]
        if missing:
            raise ConfigError(f"unknown document id(s): {', '.join(missing[:5])}")
        return [self.corpus[d] for d in doc_ids]

    def rerank(self, text: str, candidates: list[Document]) -> list[Hit]:
        self._require_loaded()
        if self.reranker is None:
            raise NotConfiguredError("reranking is not configured on this server (start it with --reranker)")
        return sort_hits(self.reranker.rerank(Query("q", text), candidates))

    def rerank_hits(self, text: str, hits: list[Hit], depth: int) -> list[Hit]:
        """Rerank the top ``depth`` hits; the rest keep their order below them."""
        head = self.rerank(text, self.documents([h.doc_id for h in hits[:depth]]))
        return head + hits[depth:]

    def answer(self, question: str, mode: str) -> Any:
        self._require_loaded()
        if self.pipeline is None:
            raise NotConfiguredError("QA not configured on this server (start it with --qa-model)", status=503)
        return self.pipeline.answer(question, mode=mode)

    # -- index management ------------------------------------------------------------------------

    def swap(self, retriever: str, path: Path) -> ServedIndex:
        """Open and check ``path`` fully, then serve it for ``retriever``; a failure changes nothing."""
        with self._swap_lock:
            served = open_served_index(retriever, path, verify="sha256")
            self.indexes[retriever] = served  # one assignment: requests see the old or the new index
            if self.pipeline is not None and retriever == self.qa_retriever:
                self.pipeline.retriever = served.searcher  # /qa reads from the new index too
            return served
