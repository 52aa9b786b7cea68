"""Batching shared by encoders and rerankers: length-sorted batches, padding, tokenisation ahead.

Encoders tokenise a corpus in blocks of ``block_size`` texts (the next block is tokenised in a
background thread while the current one runs through the model), sort each block by token length
so that a batch holds texts of similar length (little padding), and write results back in input
order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

logger = logging.getLogger(__name__)


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int | None = None, max_tokens: int = 16384
) -> list[np.ndarray]:
    """Index arrays of batches over ``lengths``, longest first.

    With ``batch_size`` each batch has that many items; with None a batch grows while
    ``items * longest_length <= max_tokens`` (at least one item), so short texts go in big batches.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    if batch_size is not None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches, begin = [], 0
    while begin < len(order):
        longest = max(int(lengths[order[begin]]), 1)
        size = max(1, max_tokens // longest)
        batches.append(order[begin : begin + size])
        begin += size
    return batches


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``int64[B, L]`` ids padded on the right with ``pad_id``, and ``int64[B, L]`` attention mask."""
    length = max((len(s) for s in sequences), default=0)
    ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), length), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def tokenized_blocks(
    texts: Sequence[str], tokenize: Callable[[list[str]], list[list[int]]], block_size: int = 8192
) -> Iterator[tuple[int, list[list[int]]]]:
    """Yield ``(offset, token ids)`` per block of texts, tokenising the next block in the background."""
    if not texts:
        return
    starts = list(range(0, len(texts), block_size))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(tokenize, list(texts[0:block_size]))
        for i, offset in enumerate(starts):
            ids = pending.result()
            if i + 1 < len(starts):
                nxt = starts[i + 1]
                pending = pool.submit(tokenize, list(texts[nxt : nxt + block_size]))
            yield offset, ids
