"""The training-free gate's block selection in one Triton kernel: pooled logits in, :class:`KeptBlocks` out.

The PyTorch path (``block_gating.block_gate_scores`` -> ``block_gating.select_blocks`` ->
:meth:`KeptBlocks.from_mask`) is about sixty small kernels and three host reads per layer; with it the sparse
reader's prefill cost 60 ms more than dense at 1.5k tokens on an H100 (Qwen2.5-1.5B, 28 layers, issue 24),
so the reader's prefill runs this instead: one pooled-logit GEMM (:func:`pooled_logits`) and one kernel
that, per (head, query block) row, softmaxes the visible blocks, applies the block rule, adds the sink and
diagonal blocks, and writes the kept indices compacted and sorted. Nothing is read back on the host.

Rules, as :func:`~kernels.block_gating.select_blocks` defines them: ``coverage`` (top-p: the fewest best
blocks holding that share of the probability), ``topk`` and ``threshold``. Top-p and top-k need the
row's p-th / k-th largest probability; instead of sorting, the kernel bisects on the probability
(``_BISECT_STEPS`` halvings of [0, 1], below fp32 resolution), so blocks tied at the cut are all kept
where the sort keeps some of them: masks otherwise match the reference exactly
(``tests/kernels/test_gate_select.py``). :func:`kept_blocks_ref` is that reference.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .block_gating import block_visibility, pool_blocks, select_blocks
from .block_mask import KeptBlocks

__all__ = ["kept_blocks", "kept_blocks_ref", "pooled_logits", "select_by_rule",
           "visible_block_count"]

RULES = {"coverage": 0, "threshold": 1, "topk": 2}
_BISECT_STEPS = 40


def pooled_logits(q: torch.Tensor, k: torch.Tensor, block_size: int, scale: float) -> torch.Tensor:
    """fp32 ``[B, Hq, n_q, n_k]``: mean-pooled query blocks against mean-pooled key blocks, scaled.

    Query heads are grouped under their KV head, so the pooled keys are not repeated per query head."""
    b, hq = q.shape[:2]
    hkv = k.shape[1]
    qp = pool_blocks(q, block_size)  # [B, Hq, n_q, D]
    kp = pool_blocks(k, block_size)  # [B, Hkv, n_k, D]
    n_q, d = qp.shape[2:]
    logits = qp.view(b, hkv, (hq // hkv) * n_q, d) @ kp.transpose(-1, -2)
    return logits.mul_(scale).view(b, hq, n_q, kp.shape[2])


@functools.lru_cache(maxsize=256)
def visible_block_count(seqlen_q: int, seqlen_k: int, block_size: int) -> int:
    """Causally visible (query block, key block) pairs of one head, from the lengths (no device read)."""
    return int(block_visibility(seqlen_q, seqlen_k, block_size, True, "cpu")[0].sum())


def select_by_rule(scores: torch.Tensor, *, seqlen_q: int, seqlen_k: int, block_size: int, rule: str,
                   value: float, full_heads: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`~kernels.block_gating.select_blocks` by a named rule (what :func:`kept_blocks` computes, as a
    bool ``[B, H, n_q, n_k]`` mask); query heads of the KV heads flagged in ``full_heads`` keep every
    visible block."""
    rule_arg = {rule: int(value) if rule == "topk" else value}
    mask = select_blocks(scores, seqlen_q=seqlen_q, seqlen_k=seqlen_k, block_size=block_size, causal=True,
                         **rule_arg)
    if full_heads is not None:
        visible, _ = block_visibility(seqlen_q, seqlen_k, block_size, True, scores.device)
        full_q = full_heads.bool().repeat_interleave(scores.shape[1] // full_heads.numel())
        mask = torch.where(full_q[None, :, None, None], visible, mask)
    return mask


# Arguments that follow the prompt's length: compiled once, not per divisibility pattern (see
# block_sparse_attention.LENGTH_ARGS).
@triton.jit(do_not_specialize=["stride_lb", "stride_lh", "stride_lm", "stride_cb", "stride_ch", "n_k",
                               "seqlen_q", "seqlen_k"])
def _kept_blocks_kernel(
    LOGITS, IDX, CNT, FULL,
    stride_lb, stride_lh, stride_lm, stride_ib, stride_ih, stride_im, stride_cb, stride_ch,
    H, GROUP, n_k, seqlen_q, seqlen_k, value,
    BLOCK: tl.constexpr, NK_PAD: tl.constexpr, RULE: tl.constexpr, HAS_FULL: tl.constexpr,
    STEPS: tl.constexpr,
):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs = tl.arange(0, NK_PAD)
    newest = tl.minimum((i + 1) * BLOCK - 1, seqlen_q - 1) + seqlen_k - seqlen_q
    newest = tl.minimum(newest, seqlen_k - 1)
    visible = (offs < n_k) & (offs * BLOCK <= newest)
    row = tl.load(LOGITS + b.to(tl.int64) * stride_lb + h * stride_lh + i * stride_lm + offs,
                  mask=visible, other=float("-inf"))
    top = tl.max(row, 0)
    e = tl.where(visible, tl.exp(row - top), 0.0)
    p = e / tl.sum(e, 0)
    if RULE == 1:
        keep = p >= value
    else:
        # The largest t whose kept set {p >= t} still holds `value` (top-p) or `value` blocks (top-k).
        lo = tl.zeros([], dtype=tl.float32)
        hi = tl.full([], 1.5, dtype=tl.float32)
        for _ in range(STEPS):
            mid = (lo + hi) * 0.5
            kept = p >= mid
            if RULE == 0:
                enough = tl.sum(tl.where(kept, p, 0.0), 0) >= value
            else:
                enough = tl.sum(kept.to(tl.float32), 0) >= value
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid)
        keep = p >= lo
    forced = (offs == 0) | (offs == newest // BLOCK)
    if HAS_FULL:
        full = tl.zeros([NK_PAD], dtype=tl.int32) + tl.load(FULL + h // GROUP).to(tl.int32)
        keep = keep | (full != 0)
    keep = visible & (keep | forced)  # nothing is visible to a block whose newest key is < 0
    slot = tl.cumsum(keep.to(tl.int32), 0) - 1
    tl.store(IDX + b.to(tl.int64) * stride_ib + h * stride_ih + i * stride_im + slot, offs, mask=keep)
    tl.store(CNT + b.to(tl.int64) * stride_cb + h * stride_ch + i, tl.sum(keep.to(tl.int32), 0))


def kept_blocks(logits: torch.Tensor, *, seqlen_q: int, seqlen_k: int, block_size: int, rule: str,
                value: float, full_heads: torch.Tensor | None = None) -> KeptBlocks:
    """Causal block selection from pooled ``logits`` (fp32 ``[B, H, n_q, n_k]``, CUDA) -> :class:`KeptBlocks`
    whose ``indices`` are ``n_k`` wide (padded to a power of two). ``rule``: "coverage", "threshold" or
    "topk" with its ``value``; ``full_heads``: bool ``[Hkv]``, KV heads whose query heads keep every visible
    block (``H`` must be a multiple of its length)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {tuple(RULES)}, got {rule!r}")
    b, h, n_q, n_k = logits.shape
    if (n_q, n_k) != (triton.cdiv(seqlen_q, block_size), triton.cdiv(seqlen_k, block_size)):
        raise ValueError(f"logits {tuple(logits.shape)} do not match lengths {seqlen_q}, {seqlen_k} "
                         f"in blocks of {block_size}")
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    nk_pad = max(16, triton.next_power_of_2(n_k))
    idx = torch.empty(b, h, n_q, nk_pad, dtype=torch.int32, device=logits.device)
    cnt = torch.empty(b, h, n_q, dtype=torch.int32, device=logits.device)
    if full_heads is not None and full_heads.dtype == torch.bool:
        full_heads = full_heads.to(torch.int8)
    full = full_heads if full_heads is not None else cnt  # a placeholder pointer when absent
    _kept_blocks_kernel[(n_q, b * h)](
        logits, idx, cnt, full, *logits.stride()[:3], *idx.stride()[:3], *cnt.stride()[:2],
        h, h // (full_heads.numel() if full_heads is not None else h), n_k, seqlen_q, seqlen_k, float(value),
        BLOCK=block_size, NK_PAD=nk_pad, RULE=RULES[rule], HAS_FULL=full_heads is not None,
        STEPS=_BISECT_STEPS,
    )
    return KeptBlocks(idx, cnt)


def kept_blocks_ref(logits: torch.Tensor, *, seqlen_q: int, seqlen_k: int, block_size: int, rule: str,
                    value: float, full_heads: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch reference: the bool ``[B, H, n_q, n_k]`` mask :func:`kept_blocks` describes."""
    visible, _ = block_visibility(seqlen_q, seqlen_k, block_size, True, logits.device)
    scores = torch.softmax(logits.masked_fill(~visible, float("-inf")), -1).nan_to_num(0.0)
    return select_by_rule(scores, seqlen_q=seqlen_q, seqlen_k=seqlen_k, block_size=block_size, rule=rule,
                          value=value, full_heads=full_heads)
