"""RealTime QA as cached embeddings for event-aware retrieval: documents, events, questions, splits.

The backbone stays frozen, so every text is encoded once by the plain :class:`DenseEncoder` and kept
in ``.npy`` files keyed by a fingerprint of (model, role, texts); training and evaluation then run on
arrays in seconds. Documents are ``title + body`` (what the index holds); events are the headline
with the start of the lead (what a news feed shows); questions are the quiz sentences.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sparsa.data.realtimeqa import Article, RealtimeQA, RealtimeQuestion
from sparsa.errors import ConfigError
from sparsa.retrieval.event_window import EventStore, to_days

logger = logging.getLogger(__name__)

EVENT_LEAD_CHARS = 300
EventSource = Literal["documents", "headlines"]


def event_text(article: Article) -> str:
    """Headline plus the start of the lead; untitled articles use their first line as the headline."""
    body = article.text.strip()
    title = article.title or body.split("\n", 1)[0]
    return f"{title}. {body[:EVENT_LEAD_CHARS]}"


def _encoder_key(encoder, role: str) -> str:
    """What decides the vectors (not the device or batch size, so CLI and bench share one cache)."""
    config = encoder.config
    return (f"{config.model}|{encoder.max_length}|{encoder.pooling}|{encoder.normalize}|"
            f"{config.query_prefix}|{config.doc_prefix}|{role}")


def cached_embeddings(encoder, texts: Sequence[str], cache_dir: str | Path | None, role: str) -> np.ndarray:
    """``float32[n, d]`` embeddings of ``texts``; reused from ``cache_dir`` when model and texts match.

    ``role`` is "queries" or "documents" (the encoder's two routes; events use the document route).
    """
    if role not in ("queries", "documents"):
        raise ConfigError(f"role {role!r}: expected 'queries' or 'documents'")
    encode = encoder.encode_queries if role == "queries" else encoder.encode_documents
    if cache_dir is None:
        return encode(list(texts))
    digest = hashlib.sha256(_encoder_key(encoder, role).encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    path = Path(cache_dir) / f"{role}-{digest.hexdigest()[:20]}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape[0] == len(texts):
            logger.info("reusing %d cached %s embeddings from %s", len(texts), role, path)
            return cached
    vectors = encode(list(texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(partial, vectors)
    os.replace(partial, path)
    return vectors


@dataclass(slots=True)
class EmbeddedRealtimeQA:
    """The dated article pool as document and event embeddings, plus the questions that have gold."""

    articles: list[Article]
    article_days: np.ndarray  # datetime64[D][n]
    documents: np.ndarray  # float32[n, d], plain encoder, document route
    events: EventStore  # headline+lead embeddings, same rows as ``articles``
    questions: list[RealtimeQuestion]
    query_vectors: np.ndarray  # float32[q, d], plain encoder, query route
    gold: dict[str, set[str]]

    def row_of(self) -> dict[str, int]:
        return {a.id: i for i, a in enumerate(self.articles)}

    def candidates(self, when: dt.date) -> np.ndarray:
        """Rows of the articles a query asked on ``when`` may retrieve: every article dated up to that day."""
        return np.flatnonzero(self.article_days <= np.datetime64(when, "D"))


def embed_realtimeqa(data: RealtimeQA, encoder, cache_dir: str | Path | None = None,
                     questions: Sequence[RealtimeQuestion] | None = None,
                     event_source: EventSource = "documents") -> EmbeddedRealtimeQA:
    """Encode the dated pool (documents and events) and ``questions`` (default: the labelled ones).

    ``event_source``: "documents" reuses each article's document embedding as its event (one encoding
    pass); "headlines" encodes headline + lead separately (shorter texts, closer to a news feed).
    """
    if event_source not in ("documents", "headlines"):
        raise ConfigError(f"event_source {event_source!r}: expected 'documents' or 'headlines'")
    articles = sorted((a for a in data.articles.values() if a.date is not None), key=lambda a: (a.date, a.id))
    questions = list(questions if questions is not None else data.labelled())
    docs = cached_embeddings(encoder, [a.to_document().full_text for a in articles], cache_dir, "documents")
    events = docs if event_source == "documents" else \
        cached_embeddings(encoder, [event_text(a) for a in articles], cache_dir, "documents")
    query_vectors = cached_embeddings(encoder, [q.text for q in questions], cache_dir, "queries")
    days = to_days([a.date for a in articles])
    store = EventStore([a.id for a in articles], days, events)
    return EmbeddedRealtimeQA(articles, days, docs, store, questions, query_vectors, dict(data.gold))


def split_by_week(questions: Sequence[RealtimeQuestion], last_train_week: str,
                  last_test_date: dt.date | None = None) -> tuple[list[int], list[int]]:
    """Positions of training questions (week <= ``last_train_week``, ``YYYYMMDD``) and of later test ones."""
    if len(last_train_week) != 8 or not last_train_week.isdigit():
        raise ConfigError(f"last_train_week {last_train_week!r}: expected YYYYMMDD")
    train = [i for i, q in enumerate(questions) if q.week <= last_train_week]
    test = [i for i, q in enumerate(questions)
            if q.week > last_train_week and (last_test_date is None or q.date <= last_test_date)]
    return train, test


def embed_dated_dataset(folder: str | Path, encoder, cache_dir: str | Path | None,
                        splits: Sequence[str], event_source: EventSource = "documents",
                        ) -> tuple[EmbeddedRealtimeQA, list[list[int]]]:
    """A dated dataset (BEIR layout: a dated corpus, ``queries.jsonl`` with a ``date`` per query,
    ``qrels/<split>.tsv``) as the same embedded pool RealTime QA trains on; also the positions of each
    split's questions. Undated documents are left out (they are no event and no query's candidate);
    a judged query without a date is an error naming the file."""
    from sparsa.data import load_corpus, read_qrels, read_queries
    from sparsa.errors import DataFormatError
    from sparsa.retrieval.dated import doc_day, read_query_days

    folder = Path(folder)
    queries_file = folder / "queries.jsonl"
    if not queries_file.is_file():
        raise DataFormatError(queries_file, "a dated dataset needs queries.jsonl with a date per query")
    corpus, texts, days = load_corpus(folder), {q.id: q.text for q in read_queries(queries_file)}, \
        read_query_days(queries_file)
    documents = [corpus[doc_id] for doc_id in corpus]
    articles = [Article(d.id, d.id, d.title, d.text, dt.date.fromisoformat(doc_day(d)))
                for d in documents if doc_day(d)]
    if not articles:
        raise DataFormatError(folder, "no document has a metadata.date: not a dated corpus")
    if len(articles) < len(documents):
        logger.warning("%d undated documents left out of event training", len(documents) - len(articles))
    questions: list[RealtimeQuestion] = []
    gold: dict[str, set[str]] = {}
    positions: list[list[int]] = []
    for split in splits:
        qrels_file = folder / "qrels" / f"{split}.tsv"
        if not qrels_file.is_file():
            raise DataFormatError(qrels_file, f"no qrels for split {split!r}")
        rows = []
        for qid, docs in read_qrels(qrels_file).items():
            if qid not in texts or qid not in days:
                raise DataFormatError(queries_file, f"judged query {qid!r} ({qrels_file.name}) is missing or "
                                                    "has no date")
            rows.append(len(questions))
            day = days[qid]
            questions.append(RealtimeQuestion(qid, texts[qid], day, day.strftime("%Y%m%d"), (), ()))
            gold[qid] = {doc for doc, grade in docs.items() if grade > 0}
        positions.append(rows)
    data = RealtimeQA(questions, {a.id: a for a in articles}, gold)
    return embed_realtimeqa(data, encoder, cache_dir, questions, event_source), positions
