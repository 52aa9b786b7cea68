"""Cooperative deadlines for long library calls (the service's requests).

A caller runs work inside ``deadline_scope(at)`` (``at``: a ``time.monotonic()`` instant); loops that
work in steps call ``check_deadline()`` between steps, which raises ``DeadlineExceeded`` once the
instant has passed, so the work stops instead of running on after its caller gave up. The steps that
check: every encoder batch (``sparsa.batching.map_batches``: SPLADE and dense queries and documents),
every query-likelihood scoring batch, the service's reranking chunks, the reader's prefill (before it
starts) and each decode step. One step (a forward pass, a Lucene search) is never interrupted.
Outside a scope ``check_deadline`` costs one context-variable read and does nothing. The deadline
lives in a ``ContextVar``: set it in the thread that does the work.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sparsa.errors import SparsaError

_deadline: ContextVar[float | None] = ContextVar("sparsa_deadline", default=None)


class DeadlineExceeded(SparsaError):
    """The work's deadline passed (or the next step could not finish before it); the work stopped."""


@contextmanager
def deadline_scope(at: float | None) -> Iterator[None]:
    """Work in this block stops at ``at`` (monotonic seconds) when it checks; None: no deadline."""
    token = _deadline.set(at)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the current deadline (negative once past), or None without one."""
    at = _deadline.get()
    return None if at is None else at - time.monotonic()


def check_deadline(need: float = 0.0) -> None:
    """Raise ``DeadlineExceeded`` if the deadline has passed, or would pass within ``need`` seconds
    (the expected cost of the next step: a step that cannot finish in time is not started)."""
    at = _deadline.get()
    if at is not None and time.monotonic() + need > at:
        late = time.monotonic() - at
        raise DeadlineExceeded("the deadline passed" if late >= 0 else f"the next step (~{need:.2f} s) would "
                               f"end after the deadline ({-late:.2f} s left)")
