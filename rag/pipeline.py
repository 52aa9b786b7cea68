"""End-to-end QA: route -> retrieve (any retriever, optional rerank) -> read.

``QAPipeline.answer(question, mode)`` returns an :class:`Answer` with the answer text, citations
(always ids of the retrieved passages), the route taken and the seconds spent per stage. ``mode``
is ``"retrieve"`` (always read from passages), ``"recall"`` (closed-book) or ``"auto"`` (a router
from ``rag/routing.py`` decides per question; without a router, auto retrieves whenever a
retriever is present). When the router needs the LM's closed-book answer to decide (its confidence
is a feature) and decides to recall, that answer is returned as is, so routing costs no second read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparsa.errors import ConfigError
from sparsa.search import Retriever
from sparsa.types import Corpus, Document, Hit, Query

logger = logging.getLogger(__name__)

MODES = ("auto", "retrieve", "recall")
STAGES = ("route", "retrieve", "rerank", "read", "total")


@dataclass(frozen=True, slots=True)
class Answer:
    question: str
    text: str  # the answer
    citations: list[str]  # doc ids, always a subset of the retrieved passages' ids
    route: str  # "retrieve" | "recall"
    passages: list[Hit]  # retrieved hits used as context (empty when recalled)
    timings: dict[str, float]  # seconds per stage: "route", "retrieve", "rerank", "read", "total"

    def to_dict(self) -> dict:
        return asdict(self)


class QAPipeline:
    """``reader``: a :class:`sparsa.rag.reader.Reader`; ``retriever``: any ``sparsa.search.Retriever``;
    ``corpus`` turns hits into passages; ``router``: a :class:`sparsa.rag.routing.Router`; ``reranker``:
    any ``RERANKERS`` class's instance (it reranks ``rerank_depth`` hits, the reader gets the top ``k``)."""

    def __init__(self, reader: Any, retriever: Retriever | None = None, corpus: Corpus | None = None,
                 router: Any = None, reranker: Any = None, k: int = 5, rerank_depth: int = 20):
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if retriever is not None and corpus is None:
            raise ConfigError("a retriever needs the corpus (dataset) that turns its hits into passages")
        self.reader, self.retriever, self.corpus = reader, retriever, corpus
        self.router, self.reranker, self.k = router, reranker, k
        self.rerank_depth = max(rerank_depth, k)

    def answer(self, question: str, mode: str = "auto") -> Answer:
        *_, answer = self.stream(question, mode)
        return answer

    def stream(self, question: str, mode: str = "auto") -> Iterator[str | Answer]:
        """Yield answer text pieces as the reader writes them, then the final :class:`Answer`."""
        if mode not in MODES:
            raise ConfigError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        if not question.strip():
            raise ConfigError("the question is empty")
        if mode == "retrieve" and self.retriever is None:
            raise ConfigError("mode 'retrieve' needs an index (retriever); none was given")
        started = time.perf_counter()
        timings = dict.fromkeys(STAGES, 0.0)
        route, closed_book = self._route(question, mode, timings)
        hits: list[Hit] = []
        if route == "recall" and closed_book is not None:
            output = closed_book  # the router already read closed-book: reuse it
            yield output.raw
        else:
            passages: list[Document] = []
            if route == "retrieve":
                hits, passages = self._passages(question, timings)
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

    def _route(self, question: str, mode: str, timings: dict[str, float]) -> tuple[str, Any]:
        if mode != "auto":
            return mode, None
        if self.retriever is None:
            return "recall", None
        if self.router is None:
            return "retrieve", None
        started = time.perf_counter()
        decision = self.router.decide(question, self.reader)
        timings["route"] = time.perf_counter() - started
        return decision.route, decision.closed_book

    def _passages(self, question: str, timings: dict[str, float]) -> tuple[list[Hit], list[Document]]:
        started = time.perf_counter()
        depth = self.rerank_depth if self.reranker is not None else self.k
        hits = self.retriever.search_text(question, k=depth)
        timings["retrieve"] = time.perf_counter() - started
        missing = [hit.doc_id for hit in hits if hit.doc_id not in self.corpus]
        if missing:
            raise ConfigError(f"the index returned {len(missing)} ids the corpus lacks (e.g. {missing[0]!r}): "
                              "is --dataset the corpus this index was built from?")
        if self.reranker is not None and hits:
            started = time.perf_counter()
            hits = self.reranker.rerank(Query("q", question), [self.corpus[h.doc_id] for h in hits])
            timings["rerank"] = time.perf_counter() - started
        hits = hits[: self.k]
        return hits, [self.corpus[h.doc_id] for h in hits]


def load_pipeline(index: str | Path | None, *, model: str = "smollm2-135m-instruct", dataset: str | Path | None = None,
                  reranker: str | None = None, k: int = 5, router: str | Path | None = None,
                  rerank_model: str | Path | None = None, **reader_config: Any) -> QAPipeline:
    """Open an index (any sparsa index folder or name, through ``sparsa.search.open_retriever``; None:
    closed-book only), its corpus and the reader.

    ``dataset``: the dataset folder or corpus file whose documents the index holds (needed to turn
    hits into passages). ``reranker``: a ``RERANKERS`` name (``tildev2`` needs ``rerank_model``, its
    passage store). ``router``: a router file saved by :meth:`sparsa.rag.routing.Router.save`, or
    ``"default"``. ``reader_config``: :class:`sparsa.rag.reader.ReaderConfig` fields.
    """
    from sparsa.data import load_corpus
    from sparsa.rag.reader import Reader

    retriever = corpus = None
    if index is not None:
        from sparsa.search import open_retriever

        if dataset is None:
            raise ConfigError("an index needs its dataset (the corpus it was built from) to read passages")
        retriever = open_retriever(index)
        corpus = load_corpus(dataset)
    elif reranker is not None:
        raise ConfigError("a reranker needs an index")
    ranker = None
    if reranker is not None:
        from sparsa.registry import RERANKERS

        cls = RERANKERS.get(reranker)
        if reranker == "tildev2" and rerank_model is None:
            raise ConfigError("tildev2 needs rerank_model: a TILDEv2 passage store folder")
        ranker = cls.load(rerank_model)
    reader = Reader.load(model, **reader_config)
    routing = None
    if router is not None:
        from sparsa.rag.routing import Router

        routing = Router.load(router, corpus=corpus)
    return QAPipeline(reader, retriever=retriever, corpus=corpus, router=routing, reranker=ranker, k=k)
