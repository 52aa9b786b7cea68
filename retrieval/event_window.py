"""Recent events for a query time: the dated event embeddings an event-aware query encoder attends to.

An event is a dated news item (a headline with its lead) embedded by the plain dense encoder. For a
query asked on day ``t`` the window holds events dated in ``[t - window_days, t]``: never a day after
``t`` (the query cannot know the future), and undated items never. From the window at most
``max_events`` are kept, either the most similar to the query (the query's own embedding decides,
as the paper retrieves events related to the query) or the most recent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sparsa.errors import ConfigError

EventSelection = Literal["similar", "recent"]
_NO_DATE = np.datetime64("NaT")


def to_days(dates: Sequence[dt.date | None]) -> np.ndarray:
    """Dates -> ``datetime64[D]`` array (None -> NaT, which no window ever contains)."""
    return np.array([np.datetime64(d, "D") if d is not None else _NO_DATE for d in dates],
                    dtype="datetime64[D]")


@dataclass(frozen=True, slots=True)
class EventWindow:
    """Events chosen for one query: row indices into the store, age in days (>= 0), similarity."""

    indices: np.ndarray  # int64[m]
    ages: np.ndarray  # int64[m], days before the query
    scores: np.ndarray  # float32[m], cosine to the query embedding


class EventStore:
    """Dated event embeddings: ``float32[n, d]`` (L2-normalised) with one date per row."""

    def __init__(self, ids: Sequence[str], dates: Sequence[dt.date | None] | np.ndarray,
                 embeddings: np.ndarray):
        days = dates if isinstance(dates, np.ndarray) else to_days(dates)
        if embeddings.ndim != 2 or len(ids) != len(days) or len(days) != embeddings.shape[0]:
            raise ConfigError(f"event store: {len(ids)} ids, {len(days)} dates, "
                              f"embeddings {embeddings.shape}")
        self.ids = list(ids)
        self.days = days.astype("datetime64[D]")
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def in_window(self, when: dt.date, window_days: int) -> np.ndarray:
        """Indices of events dated within ``[when - window_days, when]`` (undated: never)."""
        if window_days < 0:
            raise ConfigError(f"window_days must be >= 0, got {window_days}")
        end = np.datetime64(when, "D")
        start = end - np.timedelta64(window_days, "D")
        return np.flatnonzero((self.days >= start) & (self.days <= end))

    def select(
        self, query: np.ndarray, when: dt.date, window_days: int, max_events: int,
        selection: EventSelection = "similar", exclude: Sequence[int] = (),
    ) -> EventWindow:
        """The events for a query embedding ``float32[d]`` asked on ``when``; at most ``max_events``.

        ``exclude``: store rows never to return (e.g. the training target itself in self-supervised pairs).
        """
        if max_events < 1:
            raise ConfigError(f"max_events must be >= 1, got {max_events}")
        candidates = self.in_window(when, window_days)
        if len(exclude):
            candidates = np.setdiff1d(candidates, np.asarray(exclude, dtype=np.int64), assume_unique=True)
        scores = self.embeddings[candidates] @ query.astype(np.float32)
        ages = (np.datetime64(when, "D") - self.days[candidates]).astype(np.int64)
        if selection == "similar":
            order = np.argsort(-scores, kind="stable")[:max_events]
        elif selection == "recent":
            order = np.lexsort((-scores, ages))[:max_events]  # youngest first, ties by similarity
        else:
            raise ConfigError(f"event selection {selection!r}: expected 'similar' or 'recent'")
        return EventWindow(candidates[order].astype(np.int64), ages[order], scores[order].astype(np.float32))

    def batch(
        self, queries: np.ndarray, whens: Sequence[dt.date], window_days: int, max_events: int,
        selection: EventSelection = "similar",
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Padded event tensors for a batch of queries ``float32[B, d]``.

        Returns ``(events float32[B, max_events, d], ages int64[B, max_events], mask bool[B, max_events])``;
        ``mask`` is True where a real event sits (a window may hold fewer, even none).
        """
        count, dim = len(whens), self.embeddings.shape[1]
        events = np.zeros((count, max_events, dim), dtype=np.float32)
        ages = np.zeros((count, max_events), dtype=np.int64)
        mask = np.zeros((count, max_events), dtype=bool)
        for row, (query, when) in enumerate(zip(queries, whens, strict=True)):
            window = self.select(query, when, window_days, max_events, selection)
            m = len(window.indices)
            events[row, :m] = self.embeddings[window.indices]
            ages[row, :m] = window.ages
            mask[row, :m] = True
        return events, ages, mask
