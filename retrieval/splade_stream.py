"""The indexing path of :class:`~sparsa.retrieval.splade.SpladeEncoder`: texts in, CSR blocks out, in order.

Where the time went before (H100, splade-tiny, unseen SciFact texts, 4.2k docs/s): the GPU's work is a
2-layer BERT and the fused pooling kernel (a few ms per 200 documents); the rest was the host feeding
it one step at a time: tokenising, padding in a Python loop, a host sync in the attention-mask check of
every forward pass, three device->host copies per batch and a ``SparseVector`` object per document. Here:

- batches come tokenised and padded from tokenizer processes (``sparsa.token_batches``);
- masked LMs get their padding as a 4-d boolean mask, which Transformers passes to SDPA as it is (a
  2-d mask is checked with ``mask.all()``, which waits for the GPU);
- batch ``i + 1`` is queued on the GPU before batch ``i`` is read back, and batch ``i`` is made sparse
  on a side stream (``nonzero`` waits only for that stream): the GPU never waits for the host;
- each batch comes back in one device->host copy (counts, term ids, weights) and becomes CSR rows;
  a chunk's rows go back to input order with one numpy gather (``SparseRows.permuted``).

Same vectors as :meth:`SpladeEncoder.encode` (tests compare them on SciFact documents).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from sparsa.deadline import check_deadline
from sparsa.progress import progress_bar
from sparsa.sdpa_backends import without_cudnn
from sparsa.sparse_rows import SparseRows
from sparsa.token_batches import Layout, TokenBatch, available_cores, token_batches

if TYPE_CHECKING:
    import torch

    from sparsa.retrieval.splade import SpladeEncoder


def layout_of(encoder: SpladeEncoder) -> Layout:
    if encoder.architecture == "masked-lm":
        return Layout(encoder.pad_id)
    return Layout(encoder.pad_id, causal=True, bos=encoder.tokenizer.bos_token_id, echo=encoder.config.echo)


class _Batches:
    """Runs batches on the encoder's device, one queued ahead of the one being read back."""

    def __init__(self, encoder: SpladeEncoder, top_k: int | None):
        import torch

        self.encoder, self.top_k, self.device = encoder, top_k, encoder.device
        self.side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        attn = getattr(encoder.model.config, "_attn_implementation", None)
        self.mask_4d = encoder.architecture == "masked-lm" and attn == "sdpa"

    def launch(self, batch: TokenBatch) -> tuple[torch.Tensor, object]:
        """Queue the batch; its pooled ``float32[B, V]`` (not ready yet) and an event marking it ready."""
        import torch

        from sparsa.retrieval.splade import _keep_top_k
        from sparsa.retrieval.splade_pooling import pool_splade

        enc, cuda = self.encoder, self.side is not None
        ids = torch.from_numpy(batch.ids)
        ranges = torch.from_numpy(batch.ranges)
        if cuda:  # pinned copies return at once; the pinned blocks are reused only after the copy ran
            ids = ids.pin_memory().to(self.device, non_blocking=True)
            ranges = ranges.pin_memory().to(self.device, non_blocking=True)
        lengths, start, end = ranges[0], ranges[1], ranges[2]
        mask = torch.arange(ids.shape[1], device=self.device)[None, :] < lengths[:, None]  # [B, L]
        if self.mask_4d:
            mask = mask[:, None, None, :]
        else:
            mask = mask.long()
            ids = ids.long()
        kwargs = {"use_cache": False} if enc.architecture == "causal-lm" else {}
        with without_cudnn(self.device):  # a new batch shape each time: cuDNN would plan each one
            hidden = enc.model(input_ids=ids, attention_mask=mask, **kwargs).logits  # [B, L, D]
        pooled = pool_splade(hidden, enc.weight, enc.bias, start, end, enc.pooling, enc._pool_cache)
        if self.top_k is not None:
            pooled = _keep_top_k(pooled, self.top_k)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        return pooled, event

    def read(self, pooled: torch.Tensor, event: object) -> SparseRows:
        """The batch's rows (sorted term ids per row) after one device->host copy."""
        import contextlib

        import torch

        context = contextlib.nullcontext()
        if self.side is not None:
            self.side.wait_event(event)
            context = torch.cuda.stream(self.side)
        with context:
            flat = pooled.view(-1)
            where = flat.nonzero().squeeze(1)  # row-major: each row's terms in order; waits for this stream
            counts = (pooled > 0).sum(dim=1, dtype=torch.int32)
            vocab = pooled.shape[1]
            packed = torch.cat((counts, (where % vocab).to(torch.int32), flat[where].view(torch.int32)))
            host = packed.cpu().numpy()
        rows, nnz = pooled.shape[0], where.numel()
        return SparseRows.from_counts(host[:rows].astype(np.int64), host[rows : rows + nnz],
                                      host[rows + nnz :].view(np.float32))


def stream_rows(encoder: SpladeEncoder, texts: Sequence[str], top_k: int | None, threads: int | None = None,
                show_progress: bool | None = False, desc: str = "docs", batch_size: int | None = None,
                ) -> Iterator[tuple[int, SparseRows]]:
    """``(offset, rows)`` per chunk of ``texts``, in order; ``threads``: CPU threads the job may use
    (tokenizer processes on a GPU, torch threads on a CPU; None: all cores)."""
    import torch

    if isinstance(texts, str):
        raise TypeError("expected a sequence of texts, got one str")
    from sparsa.retrieval.splade import _TOKENS_PER_BATCH

    max_tokens = encoder.config.max_tokens or _TOKENS_PER_BATCH.get(encoder.device.type, 16384)
    runner = _Batches(encoder, top_k)
    saved_threads = torch.get_num_threads()
    if encoder.device.type == "cpu":
        torch.set_num_threads(min(threads or available_cores(), available_cores()))
    chunks = token_batches(encoder._token_ids, texts, layout_of(encoder),
                           batch_size or encoder.config.batch_size, max_tokens, encoder.device.type, threads)
    # Batches read back but whose chunk is not complete: chunk start -> [end, positions, rows, batches left]
    open_chunks: dict[int, list] = {}
    order: list[int] = []
    try:
        with progress_bar(len(texts), f"SPLADE {desc}", unit="doc", show=show_progress) as bar, \
                torch.inference_mode():
            pending = None
            for start, end, batches in _flatten(chunks, open_chunks, order):
                for batch in batches:
                    check_deadline()  # a caller's deadline (the service's) stops the work between batches
                    launched = (batch, start, runner.launch(batch))
                    if pending is not None:
                        yield from _collect(pending, runner, open_chunks, order, bar)
                    pending = launched
                if not batches:  # an empty chunk (no texts): nothing to wait for
                    yield from _ready(open_chunks, order, bar)
            if pending is not None:
                yield from _collect(pending, runner, open_chunks, order, bar)
    finally:
        chunks.close()
        torch.set_num_threads(saved_threads)


def _flatten(chunks, open_chunks: dict, order: list) -> Iterator[tuple[int, int, list[TokenBatch]]]:
    for start, end, batches in chunks:
        open_chunks[start] = [end, [], [], len(batches)]
        order.append(start)
        yield start, end, batches


def _collect(pending, runner: _Batches, open_chunks: dict, order: list,
             bar) -> Iterator[tuple[int, SparseRows]]:
    batch, start, (pooled, event) = pending
    state = open_chunks[start]
    state[1].append(batch.positions)
    state[2].append(runner.read(pooled, event))
    state[3] -= 1
    yield from _ready(open_chunks, order, bar)


def _ready(open_chunks: dict, order: list, bar) -> Iterator[tuple[int, SparseRows]]:
    """Complete chunks at the head of the order, back in input order."""
    while order and open_chunks[order[0]][3] == 0:
        start = order.pop(0)
        end, positions, parts, _ = open_chunks.pop(start)
        rows = SparseRows.concat(parts)
        if positions:
            rows = rows.permuted(np.argsort(np.concatenate(positions), kind="stable"))
        bar.update(end - start)
        yield start, rows
