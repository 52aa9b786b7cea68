"""What a service has loaded (indexes, corpus, reranker, QA pipeline) and the library calls on it.

Everything goes through the library's public functions: ``sparsa.search.open_retriever`` for
search (``api/served_index.py`` opens and checks each index), ``RERANKERS`` for reranking,
``rag.pipeline.load_pipeline`` for QA. An index that fails its manifest check is refused with the
library's message and never served; swapping an index opens and checks the new one first, so a bad
swap leaves the old index serving. An index built from another corpus than the served one is refused
(``api/identity.py``). Long work checks the request's deadline (``sparsa.deadline``) between steps:
reranking runs in chunks, the reader between decode steps.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from pathlib import Path
from typing import Any

from sparsa.api.admission import Ewma
from sparsa.api.identity import check_hits, check_index
from sparsa.api.served_index import ServedIndex, open_served_index
from sparsa.api.settings import BASE_RETRIEVERS, ServiceConfig
from sparsa.artifacts import hold_serving, release_serving
from sparsa.config import index_path
from sparsa.deadline import check_deadline
from sparsa.errors import ConfigError, CorpusMismatchError, SparsaError
from sparsa.types import Document, Hit, Query, sort_hits

logger = logging.getLogger(__name__)


class NotConfiguredError(SparsaError):
    """The request needs something this server does not serve: 400 for a retriever or the reranker
    (the client can choose another), 503 for QA (the service itself lacks it)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class NotReadyError(SparsaError):
    """The server is still loading."""


def fusion_available() -> bool:
    return importlib.util.find_spec("sparsa.retrieval.fusion") is not None


def _capped(chain: Any, max_new_tokens: int) -> Any:
    """The chain with its reader generating at most ``max_new_tokens`` (the server's limit)."""
    if chain.reader.max_new_tokens <= max_new_tokens:
        return chain
    return chain.override({"reader.max_new_tokens": max_new_tokens})


class ServiceState:
    """The loaded resources of one service; all methods are blocking (handlers run them in threads)."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.indexes: dict[str, ServedIndex] = {}
        self.corpus = None
        self.reranker: Any = None
        self.pipeline: Any = None
        self.qa_retrievers: tuple[str, ...] = ()  # the served indexes the QA pipeline retrieves from
        self.qa_config: Any = None  # the PipelineConfig /qa runs (qa_chain), once loaded
        self.event_retriever: Any = None  # dense + event-aware query encoder (as_of searches)
        self.problems: list[str] = []
        self.corpus_identity: dict[str, Any] | None = None  # the served corpus (name, ids hash)
        self.rerank_cost = Ewma()  # seconds per reranked passage (sets each request's work cap)
        self.loaded = threading.Event()
        self._swap_lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------------

    def load(self, strict: bool = False) -> ServiceState:
        """Load everything configured. ``strict``: the first failure raises (``sparsa serve``);
        otherwise failures are recorded in ``problems`` and the service is not ready."""
        steps = [(f"index {name}", lambda n=name, p=path: self._load_index(n, p))
                 for name, path in self.config.indexes.items()]
        steps += [("corpus", self._load_corpus)] if self.config.dataset else []
        steps += [("index identity", self._check_identities)] if self.config.dataset else []
        steps += [("event encoder", self._load_event_encoder)] if self.config.event_encoder else []
        steps += [("reranker", self._load_reranker)] if self.config.reranker else []
        steps += ([("QA pipeline", self._load_pipeline)]
                  if self.config.qa_model or self.config.qa_pipeline else [])
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

    def _device(self, retriever: str) -> str | None:
        return self.config.splade_device if retriever == "splade" else None

    def _load_index(self, retriever: str, path: Path) -> None:
        self.indexes[retriever] = open_served_index(retriever, Path(path), self.config.verify,
                                                    self._device(retriever))

    def _load_corpus(self) -> None:
        """The dataset's documents: its on-disk store (built once; ``sparsa.docstore``), or a small corpus
        in memory."""
        from sparsa.docstore import DocStore, open_documents

        self.corpus = open_documents(self.config.dataset)
        self.corpus_identity = self.corpus.identity
        if isinstance(self.corpus, DocStore):  # a store is not rebuilt under the server's feet
            hold_serving(self.corpus.folder)

    def _check_identities(self) -> None:
        """Stop serving every index built from another corpus (and raise, naming them)."""
        refused = []
        for name, served in list(self.indexes.items()):
            try:
                self._check_identity(served)
            except SparsaError as exc:
                del self.indexes[name]
                release_serving(served.path)
                refused.append(str(exc))
        if refused:
            from sparsa.api.identity import IndexMismatchError

            raise IndexMismatchError("; ".join(refused))

    def _check_identity(self, served: ServedIndex) -> None:
        warning = check_index(served.retriever, served.path, served.manifest, self.corpus_identity)
        served.unchecked = warning is not None

    def _load_event_encoder(self) -> None:
        """The served dense index searched with an event-aware head (``sparsa train event``) over the dated
        corpus: /search with ``as_of`` on ``dense`` encodes the query as of that day."""
        if "dense" not in self.indexes or self.corpus is None:
            raise ConfigError("the event-aware query encoder needs a served dense index and its dated corpus")
        from sparsa.retrieval.dated import EventAwareRetriever
        from sparsa.retrieval.event_encoder import EventQueryEncoder

        head = EventQueryEncoder.load(self.config.event_encoder)
        self.event_retriever = EventAwareRetriever(self.indexes["dense"].searcher, head, self.corpus)

    def _load_reranker(self) -> None:
        from sparsa.registry import RERANKERS

        self.reranker = RERANKERS.get(self.config.reranker).load(self.config.reranker_model)
        # One small rerank before serving: lazy initialisation happens now, and the first request's work cap
        # (rerank_cost: seconds per passage) has a measure.
        # A store-backed reranker (TILDEv2) scores only the passages it stored: warm it on two of those.
        ids = list(getattr(getattr(self.reranker, "store", None), "doc_ids", None) or ["a", "b"])[:2]
        warm = [Document(doc_id, text) for doc_id, text in zip(ids, ("warm up text", "more"))]
        started = time.perf_counter()
        self.reranker.rerank(Query("warm-up", "warm up"), warm)
        self.rerank_cost.add(time.perf_counter() - started, len(warm))

    def _load_pipeline(self) -> None:
        """The QA chain (``qa_chain``) over the served retrievers, corpus and reranker (nothing loaded
        twice)."""
        if importlib.util.find_spec("sparsa.rag.pipeline") is None:
            raise NotConfiguredError("QA not configured: this install has no sparsa.rag.pipeline", status=503)
        from sparsa.rag.pipeline import load_pipeline

        self.qa_config = chain = self.qa_chain()
        if chain.kg.path is not None:  # /qa answers from a knowledge graph (kg/answer.py): no index is read
            self.pipeline = load_pipeline(chain)
            return
        served = {Path(path).resolve(): name for name, path in self.config.indexes.items()}
        self.qa_retrievers = tuple(served.get(index_path(index).resolve())
                                   for index in chain.retrieval.indexes)
        if None in self.qa_retrievers or self.corpus is None:
            raise ConfigError(f"QA reads from indexes {list(chain.retrieval.indexes)}: each must be served "
                              "(--bm25/--splade/--dense) with its dataset")
        if chain.rerank.name is not None and chain.rerank.name != self.config.reranker:
            raise ConfigError(f"QA reranks with {chain.rerank.name}; serve that reranker (--reranker)")
        self.pipeline = load_pipeline(chain, retriever=self._qa_searcher(), corpus=self.corpus,
                                      reranker=self.reranker if chain.rerank.name else None)

    def qa_chain(self) -> Any:
        """The configured pipeline, or the one the flags describe: ``qa_model`` over the served BM25 index
        (else the first served) with the server's reranker and router."""
        from sparsa.rag.config import PipelineConfig

        if self.config.qa_pipeline is not None:
            return _capped(self.config.qa_pipeline, self.config.limits.max_new_tokens)
        first = "bm25" if "bm25" in self.config.indexes else next(iter(self.config.indexes), None)
        if first is None or self.config.dataset is None:
            raise ConfigError("QA needs a served index and its dataset (the passages it reads)")
        return _capped(PipelineConfig.from_dict({
            "retrieval": {"indexes": [str(self.config.indexes[first])], "dataset": str(self.config.dataset),
                          "k": self.config.qa_k, "event_encoder": str(self.config.event_encoder)
                          if self.config.event_encoder and first == "dense" else None},
            "rerank": {"name": self.config.reranker, "model": self.config.reranker_model},
            "router": {"path": str(self.config.qa_router) if self.config.qa_router else None},
            "reader": {"model": self.config.qa_model}}, "service flags"), self.config.limits.max_new_tokens)

    def _qa_searcher(self) -> Any:
        """The served retriever(s) /qa reads from: one index, or the chain's fusion of several."""
        searchers = [self.indexes[name].searcher for name in self.qa_retrievers]
        if len(searchers) == 1:  # an event-aware chain reads the served event retriever (as of the date)
            event = self.qa_config.retrieval.event_encoder and self.event_retriever
            return event or searchers[0]
        from sparsa.retrieval.fusion import HybridRetriever

        retrieval = self.qa_config.retrieval
        return HybridRetriever(searchers, method=retrieval.fusion, weights=retrieval.weights,
                               depth=retrieval.depth)

    @property
    def ready(self) -> bool:
        return self.loaded.is_set() and not self.problems

    def health(self, paths: bool = False) -> dict[str, Any]:
        """Readiness; with ``paths`` (a caller with the key) index paths, else folder names only."""
        problems = list(self.problems) if self.loaded.is_set() else ["loading"]
        indexes = {n: str(s.path) if paths else s.path.name for n, s in self.indexes.items()}
        return {"ready": self.ready, "indexes": indexes,
                "reranker": self.config.reranker if self.reranker is not None else None,
                "qa": self.pipeline is not None, "problems": problems,
                "warnings": [f"index {s.path.name} ({n}) records no corpus (built before sparsa recorded "
                             "one): served unchecked; rebuild it" for n, s in self.indexes.items()
                             if s.unchecked]}

    def _require_loaded(self) -> None:
        if not self.loaded.is_set():
            raise NotReadyError("the server is still loading its indexes and models; retry shortly")

    # -- serving ---------------------------------------------------------------------------------

    def search(self, text: str, retriever: str, k: int, fusion: dict[str, Any] | None = None,
               as_of: Any = None) -> list[Hit]:
        """``fusion``: hybrid's ``HybridRetriever`` settings (method, weights by retriever, normalisation,
        rrf_k); ``as_of``: only documents dated on or before that day (``retrieval/dated.py``), dense
        queries then encoded as of it when the server has an event-aware encoder."""
        from sparsa.retrieval.dated import search_as_of

        self._require_loaded()
        if retriever == "hybrid":
            return self._hybrid(text, k, fusion or {}, as_of)
        served = self.indexes.get(retriever)
        if served is None:
            raise NotConfiguredError(f"retriever {retriever!r} is not configured on this server; "
                                     f"served: {', '.join(self.indexes) or 'none'}")
        searcher = self.event_retriever if retriever == "dense" and as_of and self.event_retriever else \
            served.searcher
        hits = search_as_of(searcher, text, k, as_of, self.corpus)
        if served.unchecked and self.corpus is not None:
            check_hits(retriever, (h.doc_id for h in hits), self.corpus)
        return hits

    def _hybrid(self, text: str, k: int, fusion: dict[str, Any], as_of: Any = None) -> list[Hit]:
        parts = [self.indexes[name] for name in BASE_RETRIEVERS if name in self.indexes]
        if len(parts) < 2 or not fusion_available():
            raise NotConfiguredError("retriever 'hybrid' is not configured on this server: it fuses two or "
                                     "more served indexes with sparsa.retrieval.fusion; served: "
                                     f"{', '.join(self.indexes) or 'none'}")
        from sparsa.retrieval.dated import search_as_of
        from sparsa.retrieval.fusion import HybridRetriever

        weights = fusion.get("weights") or {}
        unserved = sorted(set(weights) - {p.retriever for p in parts})
        if unserved:
            raise NotConfiguredError(f"weights name {', '.join(unserved)}, not served here; hybrid fuses "
                                     f"{', '.join(p.retriever for p in parts)}")
        # Each served retriever's top max(k, 100) (deeper as of a date): enough for the fused top k.
        hybrid = HybridRetriever([served.searcher for served in parts], method=fusion.get("method", "rrf"),
                                 weights=[weights.get(p.retriever, 1.0) for p in parts], depth=max(k, 100),
                                 normalisation=fusion.get("normalisation", "minmax"),
                                 rrf_k=fusion.get("rrf_k", 60.0))
        hits = search_as_of(hybrid, text, k, as_of, self.corpus)
        if any(p.unchecked for p in parts) and self.corpus is not None:
            check_hits("hybrid", (h.doc_id for h in hits), self.corpus)
        return hits

    def documents(self, doc_ids: list[str]) -> list[Document]:
        if self.corpus is None:
            raise NotConfiguredError("this server has no corpus to look document ids up in; send passages")
        docs = self.corpus.fetch(doc_ids)
        missing = [d for d, doc in zip(doc_ids, docs, strict=True) if doc is None]
        if missing:
            raise ConfigError(f"unknown document id(s): {', '.join(missing[:5])}")
        return docs

    def rerank(self, text: str, candidates: list[Document]) -> list[Hit]:
        """Rerank in chunks of about a quarter second each, checking the request's deadline before each
        chunk: a chunk that could not finish in time is not started (``DeadlineExceeded``: 504)."""
        self._require_loaded()
        if self.reranker is None:
            raise NotConfiguredError("reranking is not configured on this server (start it with --reranker)")
        per = self.rerank_cost.value
        size = min(8, max(1, int(0.25 / per))) if per else 1  # at most 8: a stale estimate still checks often
        hits: list[Hit] = []
        for start in range(0, len(candidates), size):
            chunk = candidates[start : start + size]
            check_deadline(len(chunk) * (self.rerank_cost.value or 0.0))
            started = time.perf_counter()
            hits += self.reranker.rerank(Query("q", text), chunk)
            self.rerank_cost.add(time.perf_counter() - started, len(chunk))
        return sort_hits(hits)

    def rerank_hits(self, text: str, hits: list[Hit], depth: int) -> list[Hit]:
        """Rerank the top ``depth`` hits; the rest keep their order below them."""
        head = self.rerank(text, self.documents([h.doc_id for h in hits[:depth]]))
        return head + hits[depth:]

    def answer(self, question: str, mode: str, as_of: Any = None) -> Any:
        self._require_loaded()
        if self.pipeline is None:
            raise NotConfiguredError("QA not configured on this server (start it with --qa-model)",
                                     status=503)
        try:
            return self.pipeline.answer(question, mode=mode, as_of=as_of)
        except CorpusMismatchError as exc:  # an index without a recorded corpus returned ids it lacks
            from sparsa.api.identity import IndexMismatchError

            raise IndexMismatchError(f"/qa refused: {exc}") from None

    # -- index management ------------------------------------------------------------------------

    def swap(self, retriever: str, path: Path) -> ServedIndex:
        """Open and check ``path`` fully, then serve it for ``retriever``; a failure changes nothing."""
        with self._swap_lock:
            served = open_served_index(retriever, path, verify="sha256", device=self._device(retriever))
            event = self.event_retriever
            try:
                self._check_identity(served)  # an index of another corpus: 409, the old one keeps serving
                if event is not None and retriever == "dense":  # as_of searches read the new index too
                    event = type(event)(served.searcher, event.encoder, self.corpus)
            except SparsaError:
                release_serving(served.path)
                raise
            old = self.indexes.get(retriever)
            self.indexes[retriever], self.event_retriever = served, event  # requests see old or new
            if old is not None:
                release_serving(old.path)
            if self.pipeline is not None and retriever in self.qa_retrievers:
                self.pipeline.retriever = self._qa_searcher()  # /qa reads from the new index too
            return served
