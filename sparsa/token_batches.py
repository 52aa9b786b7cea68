"""Padded model batches made ahead of the model, in tokenizer processes when the job may use the cores.

An indexing job on a GPU is fed by the host: tokenising, cutting length-sorted batches and padding them
took more host time per document than the GPU's whole forward pass for splade-tiny. Here a chunk of
texts goes to a worker, which tokenises it (:class:`sparsa.batching.TokenIds`, the tokenizer the worker
inherited at fork), lays each text out as model input (:class:`Layout`), sorts the chunk by length, cuts
batches to a token budget and pads them: the process feeding the GPU only receives ready int32 arrays
(one pickle of a few arrays per batch) and never loops over documents. With fewer than
``MIN_POOL_THREADS`` threads, or where forking is unsafe, one background thread of this process does
the same work. Chunks are consumed in order; small first chunks let the model start early.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from sparsa import batching
from sparsa.batching import TokenIds, length_sorted_batches

logger = logging.getLogger(__name__)

MIN_POOL_THREADS = 4  # below this, tokenise in one thread of this process (no worker processes)
CHUNK_SIZES = (64, 256, 512)  # texts per chunk: ramping up, then the last size for the rest
CHUNK_SIZES_CPU = (1024, 8192)  # a CPU model is slow: big chunks sort better (less padding)


@dataclass(frozen=True, slots=True)
class Layout:
    """How a text's token ids become model input and its pooled range: as they are (masked LMs), or
    ``[bos] x`` / ``[bos] x x`` pooling the last copy (causal LMs; see ``retrieval/splade.py``)."""

    pad_id: int
    causal: bool = False
    bos: int | None = None
    echo: bool = False

    def apply(self, ids: Sequence[int]) -> tuple[Sequence[int], int, int]:
        if not self.causal:
            return ids, 0, len(ids)
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        prefix = [self.bos] if self.bos is not None else []
        if not self.echo:
            return prefix + ids, len(prefix), len(prefix) + len(ids)
        return prefix + ids + ids, len(prefix) + len(ids), len(prefix) + 2 * len(ids)


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """One padded batch: ``positions int64[B]`` of its texts in the job, ``ids int32[B, L]`` padded on
    the right, ``ranges int32[3, B]``: tokens before padding, pooled start, pooled end."""

    positions: np.ndarray
    ids: np.ndarray
    ranges: np.ndarray


def make_batches(ids: Sequence[Sequence[int]], offset: int, layout: Layout, batch_size: int | None,
                 max_tokens: int) -> list[TokenBatch]:
    """Length-sorted, padded batches of one chunk whose first text is text ``offset`` of the job."""
    items = [layout.apply(x) for x in ids]
    lengths = np.fromiter((len(item[0]) for item in items), dtype=np.int64, count=len(items))
    batches = []
    for order in length_sorted_batches(lengths, batch_size, max_tokens):
        width = int(lengths[order[0]]) if len(order) else 0  # longest first
        padded = np.full((len(order), width), layout.pad_id, dtype=np.int32)
        ranges = np.empty((3, len(order)), dtype=np.int32)
        for row, i in enumerate(order.tolist()):
            tokens, start, end = items[i]
            padded[row, : len(tokens)] = tokens
            ranges[:, row] = (len(tokens), start, end)
        batches.append(TokenBatch(order + offset, padded, ranges))
    return batches


def _batches_in_worker(texts: list[str], offset: int, layout: Layout, batch_size: int | None,
                       max_tokens: int) -> list[TokenBatch]:
    """In a tokenizer process: the chunk's batches, tokenised by the ``TokenIds`` inherited at fork."""
    return make_batches(batching._WORKER_IDS(texts), offset, layout, batch_size, max_tokens)  # type: ignore[misc]


def pool_workers(threads: int | None) -> int:
    """Tokenizer processes for a job allowed ``threads`` CPU threads (None: every core here): two
    threads stay with this process (the GPU feeder and the chunk collector); 0 means no pool."""
    threads = threads or available_cores()
    if threads < MIN_POOL_THREADS or not sys.platform.startswith("linux") or batching._fork_unsafe():
        return 0
    return threads - 2


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _pool(token_ids: TokenIds, workers: int) -> Executor:
    """The tokenizer's process pool with ``workers`` processes (kept on ``token_ids`` for later jobs)."""
    if token_ids._pool is not None and token_ids._pool_workers != workers:
        token_ids._pool.shutdown(wait=False, cancel_futures=True)
        token_ids._pool = None
    if token_ids._pool is None:
        token_ids._pool, token_ids._pool_workers = batching._start_pool(token_ids, workers), workers
    return token_ids._pool


def chunk_bounds(n: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    bounds, start, step = [], 0, 0
    while start < n:
        size = sizes[min(step, len(sizes) - 1)]
        bounds.append((start, min(n, start + size)))
        start, step = start + size, step + 1
    return bounds


def token_batches(token_ids: TokenIds, texts: Sequence[str], layout: Layout, batch_size: int | None,
                  max_tokens: int, device_type: str, threads: int | None = None,
                  ) -> Iterator[tuple[int, int, list[TokenBatch]]]:
    """``(chunk start, chunk end, its batches)`` over ``texts`` in order, made ahead of the caller.

    ``threads``: CPU threads the job may use (None: all cores). Worker processes only feed a GPU: a CPU
    model needs the cores itself.
    """
    texts = list(texts)
    workers = pool_workers(threads) if device_type == "cuda" and token_ids._backend is not None else 0
    sizes = CHUNK_SIZES if device_type == "cuda" else CHUNK_SIZES_CPU
    bounds = chunk_bounds(len(texts), sizes)
    if workers and len(bounds) > 1:
        pool, ahead = _pool(token_ids, workers), 2 * workers
        submit = lambda a, b: pool.submit(_batches_in_worker, texts[a:b], a, layout, batch_size, max_tokens)
        own = None
    else:
        own = ThreadPoolExecutor(max_workers=1)
        ahead = 1
        submit = lambda a, b: own.submit(lambda: make_batches(token_ids(texts[a:b]), a, layout, batch_size,
                                                              max_tokens))
    pending: collections.deque = collections.deque()
    try:
        for a, b in bounds:
            pending.append((a, b, submit(a, b)))
            if len(pending) > ahead:
                start, end, future = pending.popleft()
                yield start, end, future.result()
        while pending:
            start, end, future = pending.popleft()
            yield start, end, future.result()
    finally:
        for _, _, future in pending:
            future.cancel()
        if own is not None:
            own.shutdown(wait=True, cancel_futures=True)
