"""Batching shared by encoders and rerankers: length-sorted batches, padding, tokenisation ahead.

Encoders tokenise a corpus in blocks of ``block_size`` texts (the next block is tokenised in a
background thread while the current one runs through the model), sort each block by token length
so that a batch holds texts of similar length (little padding), and write results back in input
order. :class:`TokenIds` is the tokenisation they use: one parallel call into the Rust tokenizer per
block, ids only; for big jobs feeding a GPU on a many-core host, a pool of tokenizer processes.
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

from sparsa.wordpiece import CharNormaliser, WordPieceIds

logger = logging.getLogger(__name__)

# Texts tokenised per block, by device type: on a GPU small blocks let tokenising overlap the model;
# on a CPU big blocks sort better (less padding). A smaller first block lets the model start sooner.
BLOCK_SIZE = {"cpu": 8192, "cuda": 1024}
FIRST_BLOCK = {"cpu": 1024, "cuda": 256}
# Tokenizer processes: only for a GPU encoder (the CPU host is otherwise idle), on hosts with enough
# cores, and for jobs big enough to repay starting them (they then live as long as the TokenIds).
POOL_MIN_TEXTS = 2048
POOL_MIN_CORES = 8


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


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``int64[B, L]`` ids padded on the left (every row ends at the last column, where a causal LM's
    next-token logits are read), attention mask, and position ids (0 at each row's first real token)."""
    length = max((len(s) for s in sequences), default=0)
    ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), length), dtype=np.int64)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, length - len(seq):] = seq
            mask[row, length - len(seq):] = 1
    return ids, mask, np.maximum(mask.cumsum(-1) - 1, 0)


def row_slices(lengths: Sequence[int] | np.ndarray) -> list[slice]:
    """Slices that cut a flat array of consecutive rows of these lengths back into the rows."""
    ends = np.cumsum(lengths, dtype=np.int64).tolist()
    return [slice(end - n, end) for end, n in zip(ends, np.asarray(lengths).tolist(), strict=True)]


def tokenized_blocks(
    texts: Sequence[str],
    tokenize: Callable[[list[str]], list[list[int]]],
    block_size: int = 8192,
    first_block: int | None = None,
) -> Iterator[tuple[int, list[list[int]]]]:
    """Yield ``(offset, token ids)`` per block of texts, tokenising the next block in the background.

    ``first_block`` (default ``block_size``) texts come first: a small first block lets the model
    start early, while the later, larger blocks sort better and keep the tokenizer's threads busy.
    """
    if not texts:
        return
    first = min(first_block or block_size, block_size)
    starts = [0, *range(first, len(texts), block_size)]
    ends = [*starts[1:], len(texts)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(tokenize, list(texts[starts[0] : ends[0]]))
        for i, offset in enumerate(starts):
            ids = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(tokenize, list(texts[starts[i + 1] : ends[i + 1]]))
            yield offset, ids


class TokenIds:
    """``texts -> token ids`` of a Hugging Face tokenizer, as the indexing path needs them.

    Gives exactly ``tokenizer(texts, truncation=True, max_length=max_length,
    add_special_tokens=add_special_tokens)["input_ids"]`` (tests compare the two on SciFact), faster:

    - The Hugging Face wrapper turns every ``Encoding`` into Python lists (ids, type ids, masks,
      offsets) under the GIL after the Rust tokenizer returns; on the 16-core GPU host that serial
      step capped tokenisation at ~10k SciFact docs/s while the Rust part ran in parallel. Here a
      private copy of the Rust tokenizer (truncation set once, padding off) encodes the whole list
      in one ``encode_batch_fast`` call (tokenizers >= 0.21: no offsets) and only the ids are read.
      The call releases the GIL, so a background thread can tokenise while the model runs.
    - A ``BertNormalizer`` keeps a character alignment for every normalised string, which costs
      about as much as the rest of tokenisation. On ASCII text it acts character by character, so
      the same normalisation is one ``bytes.translate`` with a table read from the normaliser
      itself (what it makes of each ASCII character: lower case, control characters dropped,
      tabs and newlines to spaces); such texts go through a copy without the normaliser. Texts
      that may hold an added token (e.g. ``[MASK]``, matched before normalising) and non-ASCII
      texts take the normal path.

    Tokenizers without a Rust backend (slow tokenizers) fall back to the wrapper call.
    """

    def __init__(self, tokenizer: object, max_length: int, add_special_tokens: bool = True):
        self.tokenizer, self.max_length, self.add_special_tokens = tokenizer, max_length, add_special_tokens
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = self._plain = self._pool = self._wordpiece = self._table = self._chars = None
        self._pool_workers = 0
        if backend is None:
            return
        side = getattr(tokenizer, "truncation_side", "right")
        self._backend = _truncating_copy(backend, max_length, side)
        self._encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        self._normalizer = backend.normalizer
        added = [t.content for t in backend.get_added_tokens_decoder().values() if t.content]
        self._added = re.compile("|".join(re.escape(a.lower()) for a in added)) if added else None
        # A text can hold an added token only if it holds the token's first character in some case
        # (or, normalised, a character the normaliser turned into one): a substring test rules most out.
        self._added_firsts = tuple({c for a in added for c in (a[0].lower(), a[0].upper())})
        if type(backend.normalizer).__name__ == "BertNormalizer":
            mapped = [backend.normalizer.normalize_str(chr(i)) for i in range(128)]
            if all(len(m) <= 1 and m.isascii() for m in mapped):  # else a table cannot say it
                self._table = bytes([ord(m) if m else i for i, m in enumerate(mapped)]
                                    + list(range(128, 256)))
                self._delete = bytes(i for i, m in enumerate(mapped) if not m)
                self._plain = _truncating_copy(backend, max_length, side)
                self._plain.normalizer = None
                self._encode_plain = getattr(self._plain, "encode_batch_fast", self._plain.encode_batch)
                self._chars = CharNormaliser(backend.normalizer)
        if side == "right":
            self._wordpiece = WordPieceIds.from_tokenizer(self._backend, max_length, add_special_tokens)

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (a list of ints per text, truncated to ``max_length``)."""
        texts = list(texts)
        if self._backend is None:
            return self.tokenizer(texts, truncation=True, max_length=self.max_length,
                                  return_attention_mask=False, return_token_type_ids=False,
                                  add_special_tokens=self.add_special_tokens)["input_ids"]
        if self._wordpiece is not None:
            return self._wordpiece_ids(texts)
        if self._plain is None:
            return [e.ids for e in self._encode(texts, add_special_tokens=self.add_special_tokens)]
        plain, plain_at, other_at = [], [], []
        for i, text in enumerate(texts):
            normalised = self._normalise_ascii(text)
            if normalised is None:
                other_at.append(i)
            else:
                plain.append(normalised)
                plain_at.append(i)
        ids: list[list[int]] = [None] * len(texts)  # type: ignore[list-item]
        for i, e in zip(plain_at, self._encode_plain(plain, add_special_tokens=self.add_special_tokens),
                        strict=True):
            ids[i] = e.ids
        if other_at:
            others = self._encode([texts[i] for i in other_at], add_special_tokens=self.add_special_tokens)
            for i, e in zip(other_at, others, strict=True):
                ids[i] = e.ids
        return ids

    def blocks(self, texts: Sequence[str], device_type: str) -> Iterator[tuple[int, Sequence[Sequence[int]]]]:
        """``(offset, token ids)`` per block, sized for an encoder on ``device_type`` (next
        block tokenised ahead).

        Feeding a GPU from a host with ``POOL_MIN_CORES`` or more, jobs of ``POOL_MIN_TEXTS`` texts or more
        are tokenised by a pool of processes (one Rust tokenizer thread each), and a block's ids come as
        int32 arrays: the per-text Python work of tokenising (ASCII normalisation, reading the ids) then runs
        in parallel and outside this process's GIL, which the thread feeding the GPU needs.
        """
        tokenize: Callable[[list[str]], Sequence[Sequence[int]]] = self
        if device_type == "cuda" and len(texts) >= POOL_MIN_TEXTS and self._backend is not None:
            tokenize = self._pooled() or self
        return tokenized_blocks(texts, tokenize, BLOCK_SIZE.get(device_type, 8192),
                                FIRST_BLOCK.get(device_type))

    def _pooled(self) -> Callable[[list[str]], list[np.ndarray]] | None:
        """``texts -> int32 id arrays`` through the process pool (started on first use), or None."""
        pool, workers = self._pool, self._pool_workers
        if pool is None:
            workers = (os.cpu_count() or 1) - 2  # the GPU feeder and the block thread keep a core each
            if workers < POOL_MIN_CORES - 2 or not sys.platform.startswith("linux") or _fork_unsafe():
                return None
            pool, self._pool_workers = _start_pool(self, workers), workers
            self._pool = pool

        def tokenize(texts: list[str]) -> list[np.ndarray]:
            size = -(-len(texts) // workers)
            chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
            return [flat[r] for flat, lengths in pool.map(_tokenize_in_worker, chunks)
                    for r in row_slices(lengths)]

        return tokenize

    def _wordpiece_ids(self, texts: list[str]) -> list[list[int]]:
        """Normalise each text (ASCII by table) and run the Python WordPiece; added tokens go to Rust."""
        ids: list[list[int]] = []
        other_at = []
        for i, text in enumerate(texts):
            normalised = self._normalise(text)
            if normalised is None:
                other_at.append(i)
                ids.append([])
            else:
                ids.append(self._wordpiece(normalised))
        if other_at:
            others = self._encode([texts[i] for i in other_at], add_special_tokens=self.add_special_tokens)
            for i, e in zip(other_at, others, strict=True):
                ids[i] = e.ids
        return ids

    def _normalise(self, text: str) -> str | None:
        """What the normaliser makes of ``text``; None if the text may hold an added token."""
        normalised = self._normalise_ascii(text, check_added=False)
        if normalised is None and self._chars is not None:
            normalised = self._chars.normalise(text)
        if normalised is None:
            normalised = self._normalizer.normalize_str(text) if self._normalizer is not None else text
        return None if self._may_hold_added(text, normalised) else normalised

    def _normalise_ascii(self, text: str, check_added: bool = True) -> str | None:
        """What the ``BertNormalizer`` makes of an ASCII text; None for other texts and added tokens."""
        if self._table is None or not text.isascii():
            return None
        normalised = text.encode("ascii").translate(self._table, self._delete).decode("ascii")
        return None if check_added and self._may_hold_added(text, normalised) else normalised

    def _may_hold_added(self, text: str, normalised: str) -> bool:
        """Added tokens are matched in the raw text or in the normalised one; either way, skip it."""
        if self._added is None or not any(c in text or c in normalised for c in self._added_firsts):
            return False
        return bool(self._added.search(normalised.lower()) or self._added.search(text.lower()))


_WORKER_IDS: TokenIds | None = None  # the TokenIds a pool worker inherited at fork


def _fork_unsafe() -> bool:
    """A JVM (Lucene through pyjnius) or a Ray worker in this process: their threads do not survive a fork."""
    ray = sys.modules.get("ray")
    return "jnius" in sys.modules or bool(ray is not None and getattr(ray, "is_initialized", bool)())


def _start_pool(token_ids: TokenIds, workers: int) -> ProcessPoolExecutor:
    """Fork ``workers`` tokenizer processes now, from the calling (main) thread, before any block thread.

    Fork, not spawn: the workers inherit the tokenizer as it is (no pickling, no re-import of the user's
    script); they never touch CUDA. The Rust tokenizer's own threads are off in them
    (``TOKENIZERS_PARALLELISM=false`` across the fork, restored here afterwards).
    """
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_set_worker_ids, initargs=(token_ids,))
        list(pool.map(int, range(workers)))  # all workers fork here (fork pools start them all at once)
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    logger.info("tokenising in %d processes", workers)
    return pool


def _set_worker_ids(token_ids: TokenIds) -> None:
    global _WORKER_IDS
    _WORKER_IDS = token_ids
    token_ids._pool = None


def _tokenize_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """In a pool worker: the texts' ids as one flat int32 array and the per-text lengths."""
    ids = _WORKER_IDS(texts)  # type: ignore[misc]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())), lengths


def _truncating_copy(backend: object, max_length: int, side: str) -> object:
    """A copy of a ``tokenizers.Tokenizer`` that truncates to ``max_length`` and never pads."""
    copy = type(backend).from_str(backend.to_str())
    copy.enable_truncation(max_length, stride=0, strategy="longest_first", direction=side)
    copy.no_padding()
    return copy


def cpu_batch_workers(device_type: str) -> int:
    """Batches a CPU encoder may run at once, one torch thread each: torch's thread count (1 on GPUs).

    For minilm-l6 on the 2-core machine two single-threaded batches ran 2-7% faster than one
    two-threaded batch (small matrices and attention split poorly over threads; the elementwise steps
    between them then overlap too). Not for SPLADE, whose fused screening kernel scales over threads.
    """
    if device_type != "cpu":
        return 1
    import torch

    return max(1, torch.get_num_threads())


_single_thread_lock = threading.Lock()
_single_thread_users = 0
_saved_threads = 1


def _enter_single_thread() -> None:
    """Set torch to one intra-op thread while any ``map_batches`` with workers runs (nesting-safe)."""
    global _single_thread_users, _saved_threads
    import torch

    with _single_thread_lock:
        if _single_thread_users == 0:
            _saved_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        _single_thread_users += 1


def _leave_single_thread() -> None:
    global _single_thread_users
    import torch

    with _single_thread_lock:
        _single_thread_users -= 1
        if _single_thread_users == 0:
            torch.set_num_threads(_saved_threads)


def map_batches(fn: Callable[[object], object], items: Sequence[object], workers: int) -> Iterator[object]:
    """``fn(item)`` for each item, in order; with ``workers > 1``, that many at once in threads.

    The workers run with one torch thread each (torch's thread count, a process-wide setting, is 1
    while any such call runs and restored after the last; torch ops release the GIL); at most
    ``2 * workers`` results wait unconsumed. ``fn`` must set up its own thread-local torch state
    (``inference_mode``, autocast). Each batch starts only before the caller's deadline
    (``sparsa.deadline``): past it, ``DeadlineExceeded`` and the batches not yet started never run.
    """
    from sparsa.deadline import check_deadline

    if workers <= 1 or len(items) <= 1:
        for item in items:
            check_deadline()  # a caller's deadline (the service's) stops the work between batches
            yield fn(item)
        return
    _enter_single_thread()
    pending: collections.deque = collections.deque()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for item in items:
                check_deadline()  # checked before each batch is started, in the caller's context
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        for future in pending:  # stopped early (deadline, consumer gone): queued batches never start
            future.cancel()
        _leave_single_thread()
