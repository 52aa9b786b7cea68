"""Admission control: bounded per-endpoint queues, deadlines that stop the work, fast refusals.

Each endpoint class (search, rerank, qa) has a ``Gate``: a pool of ``workers`` threads and room for
``queue`` more requests. A request is refused at once (503 + ``Retry-After``) when the gate is full,
or when the work already waiting plus its own expected cost would end after its deadline. An admitted
request runs under ``sparsa.deadline.deadline_scope``: loops that check it (reranking chunks, the
reader's decode loop) stop when it passes, and the client gets 504. A request is counted until its
thread really ends, so work that cannot be interrupted (one forward pass, one Lucene search) still
holds its place and new requests queue behind it instead of piling up.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sparsa.deadline import DeadlineExceeded, deadline_scope


class Overloaded(Exception):
    """Refused at admission: 503 with ``Retry-After`` (seconds)."""

    def __init__(self, detail: str, retry_after: float):
        super().__init__(detail)
        self.detail, self.retry_after = detail, max(1, math.ceil(retry_after))


class RequestTimeout(Exception):
    """The request passed its deadline: 504."""

    def __init__(self, seconds: float):
        super().__init__(f"the request took longer than the server's limit of {seconds:g} s")
        self.seconds = seconds


class Ewma:
    """Exponentially weighted mean of a cost (seconds per request, per passage, ...); None until observed."""

    def __init__(self, alpha: float = 0.3):
        self.alpha, self.value = alpha, None
        self._lock = threading.Lock()

    def add(self, value: float, count: int = 1) -> None:
        per = value / max(count, 1)
        with self._lock:
            self.value = per if self.value is None else (1 - self.alpha) * self.value + self.alpha * per


class Gate:
    """``workers`` threads and ``queue`` waiting places for one endpoint class."""

    def __init__(self, name: str, workers: int, queue: int, timeout_s: float):
        self.name, self.workers, self.queue, self.timeout_s = name, workers, queue, timeout_s
        self.cost = Ewma()  # seconds per completed request
        self.pending = 0  # admitted and not finished: running, waiting, or running on past a 504
        self.pending_cost = 0.0  # their expected seconds of work
        self.rejected = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"sparsa-{name}")

    def _wait_s(self) -> float:
        return self.pending_cost / self.workers

    def admit(self, deadline: float, cost: float | None) -> float:
        """Take a place or raise ``Overloaded``; returns the expected cost charged for this request."""
        expected = cost if cost is not None else (self.cost.value or 0.0)
        with self._lock:
            if self.pending >= self.workers + self.queue:
                self.rejected += 1
                raise Overloaded(f"the server is busy: {self.name} has {self.pending} requests in progress "
                                 f"or waiting (capacity {self.workers + self.queue}); retry later",
                                 self._wait_s() or 1)
            if self.pending >= self.workers and self._wait_s() + expected > deadline - time.monotonic():
                self.rejected += 1
                raise Overloaded(f"the server is busy: {self.name} work waiting here "
                                 f"(~{self._wait_s():.1f} s) would not finish within this request's time "
                                 "limit; retry later", self._wait_s())
            self.pending += 1
            self.pending_cost += expected
        return expected

    def _release(self, expected: float) -> None:
        with self._lock:
            self.pending -= 1
            self.pending_cost = max(0.0, self.pending_cost - expected) if self.pending else 0.0

    async def run(self, fn: Callable[..., Any], *args: Any, cost: float | None = None) -> Any:
        """Run ``fn(*args)`` on this gate's threads with a deadline ``timeout_s`` from now; ``cost``: its
        expected seconds when known (else the gate's running mean)."""
        timeout_s = self.timeout_s
        started = time.monotonic()
        deadline = started + timeout_s
        expected = self.admit(deadline, cost)

        def work() -> Any:
            began = time.monotonic()
            if began >= deadline:
                raise DeadlineExceeded("the deadline passed while the request waited")
            if began - started > 0.1 and expected and began + expected > deadline:
                # It waited, and what is left would not do: spend no CPU on an answer nobody gets.
                raise DeadlineExceeded("the request could not finish in the time left after waiting")
            try:
                with deadline_scope(deadline):
                    result = fn(*args)
            except DeadlineExceeded:  # cut off: it costs at least this much here (what admission must know)
                self.cost.add(time.monotonic() - began)
                raise
            self.cost.add(time.monotonic() - began)
            return result

        future: Future = self._pool.submit(work)
        future.add_done_callback(lambda _: self._release(expected))
        try:  # the answer leaves at the deadline at the latest; a running worker stops at its next check
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=deadline - started)
        except (TimeoutError, DeadlineExceeded):
            future.cancel()  # not started yet: it never runs (a running one stops at its next check)
            raise RequestTimeout(timeout_s) from None

    def describe(self) -> dict[str, Any]:
        return {"workers": self.workers, "queue": self.queue, "pending": self.pending,
                "rejected": self.rejected, "seconds_per_request": self.cost.value}

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Gates:
    """The service's gates, by endpoint class."""

    def __init__(self, limits: Any, timeout_s: float):
        self.limits = limits  # ServiceLimits: the per-request work limits are checked beside the gates
        self.search = Gate("search", limits.search_workers, limits.search_queue, timeout_s)
        self.rerank = Gate("rerank", limits.rerank_workers, limits.rerank_queue, timeout_s)
        self.qa = Gate("qa", limits.qa_workers, limits.qa_queue, timeout_s)

    def all(self) -> tuple[Gate, ...]:
        return (self.search, self.rerank, self.qa)

    def shutdown(self) -> None:
        for gate in self.all():
            gate.shutdown()
