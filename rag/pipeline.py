"""End-to-end QA: route -> retrieve (any retriever, optional rerank) -> read.

``QAPipeline.answer(question, mode)`` returns an :class:`Answer` with the answer text, citations
(always ids of the retrieved passages), the route taken and the seconds spent per stage. ``mode``
is ``"retrieve"`` (always read from passages), ``"recall"`` (closed-book) or ``"auto"`` (a router
from ``rag/routing.py`` decides per question; without a router, auto retrieves whenever a
retriever is present). When the router needs the LM's closed-book answer to decide (its confidence
is a feature) and decides to recall, that answer is returned as is, so routing costs no second read.
``as_of`` (a date) keeps only passages whose ``meta["date"]`` is on or before it (undated passages stay),
for questions about a dated corpus such as news.

:func:`load_pipeline` builds the whole chain from one :class:`sparsa.rag.config.PipelineConfig`; a config
with a ``[kg]`` table gets ``kg/answer.py``'s ``KGPipeline`` (same ``answer`` / ``stream``, route ``kg``).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparsa.docstore import DocumentSource
from sparsa.errors import ConfigError, CorpusMismatchError
from sparsa.rag.config import MODES, PipelineConfig
from sparsa.search import Retriever
from sparsa.types import Document, Hit, Query

logger = logging.getLogger(__name__)

STAGES = ("route", "retrieve", "rerank", "read", "total")


@dataclass(frozen=True, slots=True)
class Answer:
    question: str
    text: str  # the answer
    citations: list[str]  # doc ids, always a subset of the retrieved passages' ids
    route: str  # "retrieve" | "recall" | "kg" (answered from a knowledge graph: kg/answer.py)
    passages: list[Hit]  # retrieved hits used as context (empty when recalled)
    timings: dict[str, float]  # seconds per stage: "route", "retrieve", "rerank", "read", "total"
    knowledge: list[dict] = field(default_factory=list)  # route kg: the graph items, each marked "shown"

    def to_dict(self) -> dict:
        return asdict(self)


class QAPipeline:
    """``reader``: a :class:`sparsa.rag.reader.Reader`; ``retriever``: any ``sparsa.search.Retriever``;
    ``corpus`` (a ``sparsa.docstore.DocumentSource``: a ``Corpus`` in memory or a ``DocStore`` on disk) turns
    hits into passages; ``router``: a :class:`sparsa.rag.routing.Router`; ``reranker``:
    any ``RERANKERS`` class's instance (it reranks ``rerank_depth`` hits, the reader gets the top ``k``)."""

    def __init__(self, reader: Any, retriever: Retriever | None = None, corpus: DocumentSource | None = None,
                 router: Any = None, reranker: Any = None, k: int = 5, rerank_depth: int = 20,
                 depth: int = 100):
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if retriever is not None and corpus is None:
            raise ConfigError("a retriever needs the corpus (dataset) that turns its hits into passages")
        self.reader, self.retriever, self.corpus = reader, retriever, corpus
        self.router, self.reranker, self.k = router, reranker, k
        self.rerank_depth = max(rerank_depth, k)
        self.depth = max(depth, k)  # hits fetched when passages are filtered by date

    def answer(self, question: str, mode: str = "auto", as_of: dt.date | None = None) -> Answer:
        *_, answer = self.stream(question, mode, as_of)
        return answer

    def stream(self, question: str, mode: str = "auto",
               as_of: dt.date | None = None) -> Iterator[str | Answer]:
        """Yield answer text pieces as the reader writes them, then the final :class:`Answer`."""
        if mode not in MODES:
            raise ConfigError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        if not question.strip():
            raise ConfigError("the question is empty")
        if mode == "retrieve" and self.retriever is None:
            raise ConfigError("mode 'retrieve' needs an index (retriever); none was given")
        started = time.perf_counter()
        timings = dict.fromkeys(STAGES, 0.0)
        route, closed_book = self.route(question, mode, timings)
        hits: list[Hit] = []
        if route == "recall" and closed_book is not None:
            output = closed_book  # the router already read closed-book: reuse it
            yield output.raw
        else:
            passages: list[Document] = []
            if route == "retrieve":
                hits, passages = self.retrieve_passages(question, timings, as_of)
            read_started = time.perf_counter()
            output = None
            for piece in self.reader.stream(question, passages):
                if isinstance(piece, str):
                    yield piece
                else:
                    output = piece
            timings["read"] = time.perf_counter() - read_started
            used = set(output.passages)
            hits = [hit for hit in hits if hit.doc_id in used]
        timings["total"] = time.perf_counter() - started
        yield Answer(question=question, text=output.text, citations=list(output.citations), route=route,
                     passages=hits, timings=timings)

    def route(self, question: str, mode: str = "auto",
              timings: dict[str, float] | None = None) -> tuple[str, Any]:
        """The route ``question`` takes in ``mode`` and, when the router read closed-book to decide, that
        reading (else None); the router's seconds into ``timings["route"]``."""
        if mode != "auto":
            return mode, None
        if self.retriever is None:
            return "recall", None
        if self.router is None:
            return "retrieve", None
        started = time.perf_counter()
        decision = self.router.decide(question, self.reader)
        if timings is not None:
            timings["route"] = time.perf_counter() - started
        return decision.route, decision.closed_book

    def retrieve_passages(self, question: str, timings: dict[str, float],
                          as_of: dt.date | None = None) -> tuple[list[Hit], list[Document]]:
        """The top ``k`` hits and their passages (retrieve, date filter, rerank); stage seconds
        into ``timings``."""
        started = time.perf_counter()
        depth = self.rerank_depth if self.reranker is not None else self.k
        fetch = max(depth, self.depth) if as_of else depth
        if as_of is not None and _event_aware(self.retriever):  # the question encoded as of that day
            hits = self.retriever.search_text(question, k=fetch, as_of=as_of)
        else:
            hits = self.retriever.search_text(question, k=fetch)
        docs = self.corpus.fetch([hit.doc_id for hit in hits])  # one look-up for all hits
        missing = [hit.doc_id for hit, doc in zip(hits, docs, strict=True) if doc is None]
        if missing:
            raise CorpusMismatchError(f"the index returned {len(missing)} ids the corpus lacks (e.g. "
                              f"{missing[0]!r}): is --dataset the corpus this index was built from?")
        passage = {doc.id: doc for doc in docs}
        if as_of is not None:
            hits = [hit for hit in hits if _dated_on_or_before(passage[hit.doc_id], as_of)][:depth]
        timings["retrieve"] = time.perf_counter() - started
        if self.reranker is not None and hits:
            started = time.perf_counter()
            hits = self.reranker.rerank(Query("q", question), [passage[h.doc_id] for h in hits])
            timings["rerank"] = time.perf_counter() - started
        hits = hits[: self.k]
        return hits, [passage[h.doc_id] for h in hits]


def _event_aware(retriever: Any) -> bool:
    from sparsa.retrieval.dated import EventAwareRetriever

    return isinstance(retriever, EventAwareRetriever)


def _dated_on_or_before(doc: Document, as_of: dt.date) -> bool:
    from sparsa.retrieval.dated import on_or_before

    return on_or_before(doc, as_of)


def load_pipeline(config: PipelineConfig | None = None, *, retriever: Retriever | None = None,
                  corpus: DocumentSource | None = None, reranker: Any = None) -> QAPipeline:
    """The chain ``config`` names: its indexes (through ``sparsa.search.open_retriever``, fused when
    several), documents (``sparsa.docstore.open_documents``: the dataset's on-disk store, or a small corpus
    in memory; refused when an index records another corpus), reranker, router and reader. A caller that has
    already opened the retriever, documents or reranker (the service, which serves them to /search too and
    checks them itself) passes them in instead."""
    config = config or PipelineConfig()
    if config.kg.path is not None:  # a [kg] chain answers from the graph: kg/answer.py
        from sparsa.kg.answer import KGPipeline, KGReader

        return KGPipeline(KGReader.from_config(config))
    from sparsa.rag.reader import Reader

    retrieval = config.retrieval
    if retriever is None and retrieval.indexes:
        retriever = open_pipeline_retriever(config)
    if corpus is None and retrieval.indexes:
        from sparsa.docstore import open_documents

        corpus = open_documents(retrieval.dataset)  # RetrievalConfig requires it with indexes
        check_pipeline_corpus(config, corpus)
    if retrieval.event_encoder is not None and retriever is not None and not _event_aware(retriever):
        from sparsa.retrieval.dated import EventAwareRetriever
        from sparsa.retrieval.event_encoder import EventQueryEncoder

        retriever = EventAwareRetriever(retriever, EventQueryEncoder.load(retrieval.event_encoder), corpus)
    if reranker is None and config.rerank.name is not None:
        reranker = open_reranker(config.rerank.name, config.rerank.model)
    reader = Reader(config.reader)
    router = None
    if config.router.path is not None:
        from sparsa.rag.routing import Router

        router = Router.load(config.router.path, corpus=corpus, retriever=retriever)
    return QAPipeline(reader, retriever=retriever, corpus=corpus, router=router, reranker=reranker,
                      k=retrieval.k, rerank_depth=config.rerank.depth, depth=retrieval.depth)


def check_pipeline_corpus(config: PipelineConfig, documents: DocumentSource) -> None:
    """Refuse (``CorpusMismatchError``) documents of another corpus than an index's manifest records."""
    from sparsa.artifacts import read_manifest
    from sparsa.config import index_path
    from sparsa.docstore import check_source

    for name in config.retrieval.indexes:
        check_source(documents, read_manifest(index_path(name), verify="none"), index_path(name))


def open_pipeline_retriever(config: PipelineConfig) -> Retriever:
    """The config's indexes as one retriever: the index itself, or their fusion."""
    from sparsa.config import index_path
    from sparsa.search import open_retriever

    retrieval = config.retrieval
    retrievers = []
    for name in retrieval.indexes:
        folder = index_path(name)
        if not folder.exists():
            raise ConfigError(f"index not found: {folder} (retrieval.indexes)")
        retrievers.append(open_retriever(folder))
    if len(retrievers) == 1:
        return retrievers[0]
    from sparsa.retrieval.fusion import HybridRetriever

    return HybridRetriever(retrievers, method=retrieval.fusion, weights=retrieval.weights,
                           depth=retrieval.depth)


def open_reranker(name: str, model: str | Path | None) -> Any:
    """A ``RERANKERS`` instance; ``model``: tildev2's passage store or the query-likelihood LM."""
    from sparsa.registry import RERANKERS

    cls = RERANKERS.get(name)
    if name == "tildev2" and model is None:
        raise ConfigError("tildev2 needs rerank.model: a TILDEv2 passage store folder")
    return cls.load(model)
