"""Search over a dated corpus: the as-of date filter and the event-aware query encoder.

A **dated corpus** is a corpus JSONL (or a BEIR folder's ``corpus.jsonl``) whose records carry their day
in ``metadata.date`` (``YYYY-MM-DD``; a longer ISO timestamp is cut to its day)::

    {"_id": "n1", "title": "Prime minister resigns", "text": "...", "metadata": {"date": "2022-01-02"}}

Searching **as of** a day keeps only documents dated on or before it; undated documents always stay. Each
retriever fetches ``depth`` hits before the filter, so the top ``k`` survive it on a corpus that mostly
lies after the day.

:class:`EventAwareRetriever` searches a dense index of a dated corpus with an
:class:`~sparsa.retrieval.event_encoder.EventQueryEncoder` (``sparsa train event``): each query is encoded
as of its day, attending to the documents of the days before it (the index's own vectors are the events,
as in training with ``event_source="documents"``), then the date filter applies. Its dense index must
be encoded by the head's backbone (minilm-l6).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparsa.errors import ConfigError, CorpusMismatchError
from sparsa.search import Retriever
from sparsa.types import Document, Hit, Query, Run, sort_hits

DEPTH = 1000  # hits fetched per query before the date filter


def doc_day(doc: Document) -> str | None:
    """A document's day as ``YYYY-MM-DD`` (``metadata.date``), None when undated."""
    date = (doc.meta or {}).get("date")
    return str(date)[:10] if date else None


def on_or_before(doc: Document, as_of: dt.date) -> bool:
    """Dated on or before ``as_of``; undated documents always pass."""
    day = doc_day(doc)
    return day is None or day <= as_of.isoformat()


def in_window(doc: Document, as_of: dt.date, window_days: int) -> bool:
    """Dated on or before ``as_of`` and at most ``window_days`` days before it; an undated document
    cannot be placed inside a window and fails."""
    day = doc_day(doc)
    start = as_of - dt.timedelta(days=window_days)
    return day is not None and start.isoformat() <= day <= as_of.isoformat()


def filter_as_of(hits: Sequence[Hit], corpus: Any, as_of: dt.date, window_days: int | None = None
                 ) -> list[Hit]:
    """The hits whose document is dated on or before ``as_of`` (with ``window_days``: and at most that
    many days before it, as the benches' date-filter rows); ``corpus``: a ``Corpus`` or a ``DocStore``
    (``sparsa.docstore.DocumentSource``). Ids the corpus lacks are an error."""
    docs = corpus.fetch([h.doc_id for h in hits])
    missing = [h.doc_id for h, doc in zip(hits, docs) if doc is None]
    if missing:
        raise CorpusMismatchError(f"the index returned {len(missing)} ids the corpus lacks (e.g. "
                                  f"{missing[0]!r}): is the corpus the one this index was built from?")
    if window_days is not None:
        return [h for h, doc in zip(hits, docs) if in_window(doc, as_of, window_days)]
    return [h for h, doc in zip(hits, docs) if on_or_before(doc, as_of)]


def search_as_of(retriever: Retriever, text: str, k: int, as_of: dt.date | None, corpus: Any,
                 depth: int = DEPTH, window_days: int | None = None) -> list[Hit]:
    """``retriever.search_text`` as of a day: deeper, then the date filter (an event-aware retriever
    also encodes the query as of that day). Without ``as_of``, a plain search."""
    if as_of is None:
        return retriever.search_text(text, k=k)
    if corpus is None:
        raise ConfigError("searching as of a date needs the dated corpus (its metadata.date)")
    if isinstance(retriever, EventAwareRetriever):
        hits = retriever.search_text(text, k=max(k, depth), as_of=as_of)
    else:
        hits = retriever.search_text(text, k=max(k, depth))
    return filter_as_of(hits, corpus, as_of, window_days)[:k]


def search_run_as_of(retriever: Retriever, queries: Sequence[Query], k: int, days: Mapping[str, dt.date],
                     corpus: Any, depth: int = DEPTH, show_progress: bool | None = None,
                     window_days: int | None = None) -> Run:
    """A run where query ``q`` is searched as of ``days[q.id]`` (queries without a day: plain search),
    with ``window_days`` only over the documents of the ``window_days`` days before it."""
    from sparsa.progress import progress_bar

    results: dict[str, list[Hit]] = {}
    with progress_bar(len(queries), "searching as of each query's day", "query", show=show_progress) as bar:
        for query in queries:
            results[query.id] = search_as_of(retriever, query.text, k, days.get(query.id), corpus, depth,
                                             window_days)
            bar.update(1)
    return Run(results, name=getattr(retriever, "name", "run"))


class EventAwareRetriever(Retriever):
    """A dense index of a dated corpus, its queries encoded by an event-aware head as of a day.

    ``retriever`` is the index opened by ``open_retriever`` (its query encoder becomes the head's
    backbone, so the backbone loads once); ``corpus`` (``Corpus`` or ``DocStore``) gives each indexed
    document's day.
    """

    def __init__(self, retriever: Any, encoder: Any, corpus: Any):
        index = getattr(retriever, "index", None)
        if getattr(index, "kind", None) != "dense":
            raise ConfigError("an event-aware query encoder searches a dense index "
                              "(sparsa index --kind dense)")
        model, backbone = index.encoder_spec["config"]["model"], encoder.config.backbone
        if model != backbone:
            raise ConfigError(f"the event-aware head was trained over {backbone}; the index was encoded by "
                              f"{model}: build the dense index with --model {backbone}")
        from sparsa.retrieval.event_window import EventStore, to_days

        docs = corpus.fetch(index.doc_ids)
        missing = [i for i, doc in zip(index.doc_ids, docs) if doc is None]
        if missing:
            raise CorpusMismatchError(f"the index holds {len(missing)} ids the corpus lacks (e.g. "
                                      f"{missing[0]!r}): give the dated corpus the index was built from")
        days = [doc_day(doc) for doc in docs]
        self.store = EventStore(index.doc_ids, to_days([dt.date.fromisoformat(d) if d else None
                                                        for d in days]), index.vectors)
        encoder._backbone = retriever.encoder  # the same minilm-l6 query route the index's queries take
        self.index, self.encoder = index, encoder
        self.name = f"event({retriever.name})"

    @classmethod
    def open(cls, index: str | Path, head: str | Path, corpus: Any, device: str | None = None
             ) -> EventAwareRetriever:
        """Open a dense index and a head saved by ``sparsa train event`` over ``corpus``."""
        from sparsa.retrieval.event_encoder import EventQueryEncoder
        from sparsa.search import open_retriever

        return cls(open_retriever(index, device=device), EventQueryEncoder.load(head), corpus)

    def search_text(self, text: str, k: int = 10, as_of: dt.date | None = None) -> list[Hit]:
        """Hits for ``text`` encoded as of ``as_of`` (default today). Not date-filtered: see
        :func:`search_as_of`."""
        when = as_of or dt.date.today()
        vectors = self.encoder.encode_queries([text], [when], self.store, show_progress=False)
        return sort_hits(self.index.search_vectors(vectors, k)[0])

    def search(self, queries: Sequence[Query], k: int = 1000, show_progress: bool | None = None) -> Run:
        """Every query as of today (for per-query days: :func:`search_run_as_of`)."""
        return Run({q.id: self.search_text(q.text, k) for q in queries}, name=self.name)


def read_query_days(path: str | Path) -> dict[str, dt.date]:
    """Query id -> the day it was asked, from a queries JSONL (``{"_id", "text", "date": "YYYY-MM-DD"}``,
    or ``metadata.date``) or a dataset folder's ``queries.jsonl``; queries without a date are left out."""
    from sparsa.data.beir import json_records
    from sparsa.errors import DataFormatError

    path = Path(path)
    if path.is_dir():
        path = path / "queries.jsonl"
    if not path.is_file() or ".tsv" in path.suffixes:
        return {}
    days = {}
    for number, record in json_records(path):
        value = record.get("date") or (record.get("metadata") or {}).get("date")
        if value:
            try:
                days[str(record.get("_id", record.get("id")))] = dt.date.fromisoformat(str(value)[:10])
            except ValueError:
                raise DataFormatError(path, f"date {value!r}: expected YYYY-MM-DD", number) from None
    return days
