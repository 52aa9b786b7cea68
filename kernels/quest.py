"""Quest query-aware page selection for sparse decode (Tang et al., 2024, arXiv:2406.10774).

Per page of ``page_size`` tokens and KV head, the element-wise min and max key (:class:`PageBounds`,
updated incrementally as the cache grows). ``sum_d max(q_d min_d, q_d max_d)`` bounds ``q . k`` for
every key of the page; it equals ``relu(q) . max + min(q, 0) . min``, two small matmuls, fused with the
sum over the query heads of a GQA group in :func:`quest_page_scores` (Triton; reference
:func:`quest_page_scores_ref`). :func:`select_topk` picks the top pages of each row in one Triton program
per row (bisection over the values, then over the float bit pattern for ties, stopping once exactly k pass; then a
prefix sum compacts the winners),
replacing ``torch.topk``'s several launches; :func:`quest_select` chains the two. The first (sink) page
and the newest page are always kept. The pages feed ``sparse_decode.decode_attention(page_size=P)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = ["PageBounds", "quest_page_scores", "quest_page_scores_ref", "quest_select", "select_topk",
           "select_topk_ref"]

_HEAD_DIMS = (64, 128)
_MAX_SELECT_ROW = 16384  # pages per row handled in registers by select_topk; longer rows use torch.topk


def _on_triton(t: torch.Tensor) -> bool:
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


@dataclass
class PageBounds:
    """Quest page summaries: element-wise min and max key of each page, per KV head.

    ``kmin, kmax``: ``[B, Hkv, n_pages, D]`` in the keys' dtype (min/max are exact in any dtype, and
    half-width bounds halve the bytes the selection reads) over the first ``length`` tokens; :meth:`update` after
    the cache grows recomputes only the pages from the last (partial) one on, so a decode step costs
    ``O(page_size)`` instead of ``O(S)``.
    """

    kmin: torch.Tensor
    kmax: torch.Tensor
    page_size: int
    length: int

    @staticmethod
    def from_keys(k: torch.Tensor, page_size: int = 16) -> PageBounds:
        b, h, _, d = k.shape
        empty = torch.empty(b, h, 0, d, dtype=k.dtype, device=k.device)
        return PageBounds(empty, empty.clone(), page_size, 0).update(k)

    def update(self, k: torch.Tensor) -> PageBounds:
        s = k.shape[2]
        if s < self.length:
            raise ValueError(f"the cache shrank from {self.length} to {s} tokens; rebuild the page bounds")
        first = self.length // self.page_size  # the last partial page is recomputed
        tail = k[:, :, first * self.page_size:s]
        n_new = triton.cdiv(tail.shape[2], self.page_size)
        pad = n_new * self.page_size - tail.shape[2]
        shape = (*tail.shape[:2], n_new, self.page_size, tail.shape[-1])
        new_max = torch.nn.functional.pad(tail, (0, 0, 0, pad), value=float("-inf")).view(shape).amax(3)
        new_min = torch.nn.functional.pad(tail, (0, 0, 0, pad), value=float("inf")).view(shape).amin(3)
        self.kmax = torch.cat([self.kmax[:, :, :first], new_max], 2)
        self.kmin = torch.cat([self.kmin[:, :, :first], new_min], 2)
        self.length = s
        return self


@triton.jit
def _quest_score_kernel(Q, KMAX, KMIN, S, stride_qb, stride_qh, stride_bb, stride_bh, stride_bp, n_pages, HKV,
                        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_P: tl.constexpr):
    """Quest upper bounds of one (batch, KV head) for BLOCK_P pages, summed over the group's query heads."""
    bh = tl.program_id(1)
    b = (bh // HKV).to(tl.int64)
    kvh = bh % HKV
    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < n_pages
    q = tl.load(Q + b * stride_qb + (kvh * GROUP + offs_g)[:, None] * stride_qh + offs_d[None, :],
                mask=(offs_g < GROUP)[:, None], other=0.0)
    base = b * stride_bb + kvh * stride_bh + offs_p[:, None].to(tl.int64) * stride_bp + offs_d[None, :]
    kmax = tl.load(KMAX + base, mask=p_ok[:, None], other=0.0)
    kmin = tl.load(KMIN + base, mask=p_ok[:, None], other=0.0)
    upper = tl.dot(kmax, tl.trans(tl.maximum(q, 0.0).to(kmax.dtype)))
    upper = tl.dot(kmin, tl.trans(tl.minimum(q, 0.0).to(kmin.dtype)), upper)
    score = tl.sum(upper, 1)
    score = tl.where((offs_p == 0) | (offs_p == n_pages - 1), float("inf"), score)  # sink + newest page
    tl.store(S + bh.to(tl.int64) * n_pages + offs_p, score, mask=p_ok)


def quest_page_scores(q: torch.Tensor, bounds: PageBounds) -> torch.Tensor:
    """fp32 ``[B, Hkv, n_pages]``: Quest bounds summed over each group's query heads (first/last page: inf)."""
    if q.dim() == 4:
        q = q[:, :, 0]
    b, hq, d = q.shape
    hkv, n_pages = bounds.kmax.shape[1], bounds.kmax.shape[2]
    if not (_on_triton(q) and d in _HEAD_DIMS and bounds.kmax.stride(-1) == 1 and q.stride(-1) == 1):
        return quest_page_scores_ref(q, bounds)
    scores = torch.empty(b, hkv, n_pages, dtype=torch.float32, device=q.device)
    group = hq // hkv
    block_p = 64
    _quest_score_kernel[(triton.cdiv(n_pages, block_p), b * hkv)](
        q, bounds.kmax, bounds.kmin, scores, q.stride(0), q.stride(1), *bounds.kmax.stride()[:3], n_pages, hkv,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=d, BLOCK_P=block_p)
    return scores


def quest_page_scores_ref(q: torch.Tensor, bounds: PageBounds) -> torch.Tensor:
    """PyTorch reference of :func:`quest_page_scores` (two matmuls: ``relu(q) . max + min(q, 0) . min``)."""
    if q.dim() == 4:
        q = q[:, :, 0]
    b, hq, d = q.shape
    hkv = bounds.kmax.shape[1]
    qg = q.to(bounds.kmax.dtype).view(b, hkv, hq // hkv, d).transpose(-1, -2)  # [B, Hkv, D, G]
    upper = bounds.kmax @ qg.clamp_min(0) + bounds.kmin @ qg.clamp_max(0)  # [B, Hkv, n_pages, G]
    score = upper.float().sum(-1)
    score[:, :, 0] = float("inf")
    score[:, :, -1] = float("inf")
    return score


@triton.jit
def _order_key(bits):
    """Order-preserving int64 key of float32 bit patterns (int32): negative floats' bits are flipped."""
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)


@triton.jit
def _select_topk_kernel(S, OUT, CNT, n, k, NP: tl.constexpr):
    """Indices of the k largest of one row of n floats (ties: lowest positions), in position order; also
    writes ``k`` to ``CNT[row]`` (the page count decode attention reads), saving a separate fill launch.

    Bisection for a threshold ``t`` with ``#(score >= t) >= k``, stopping as soon as exactly k scores reach
    it: first over the values between the row's finite min and max, then (ties, infinities) exactly over
    order-preserving 32-bit keys of the floats. Each round is one block-wide count reduction. On an H200 (128k tokens, 8 rows
    of 8,192 pages, k = 256) a fixed 32-round bisection took 59 us for a whole Quest step, against 83 us
    with ``torch.topk``, 106 us with a 4-pass ``tl.histogram`` radix select and 334 us with 4 bits per
    round (a [pages x 16] comparison tile that spills registers).
    """
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, NP)
    s = tl.load(S + row * n + offs, mask=offs < n, other=float("-inf"))
    s = tl.where(s == 0.0, 0.0, s)  # -0.0 -> +0.0, so the value and key orders below agree
    key = _order_key(s.to(tl.int32, bitcast=True))
    # Phase 1: bisect the values between the row's finite min and max. Scores are spread over a small range,
    # so a count of exactly k is usually hit after ~log2(n) halvings, where bisecting the 32-bit keys from
    # the full int range takes ~10 rounds more.
    finite = (offs < n) & (tl.abs(s) < float("inf"))
    lo_v = tl.min(tl.where(finite, s, float("inf")), 0)  # invariant: n_ge = #(s >= lo_v) >= k
    hi_v = tl.max(tl.where(finite, s, float("-inf")), 0)
    n_ge = tl.sum((s >= lo_v).to(tl.int32), 0)
    hi_strict = hi_v < lo_v  # becomes true once #(s >= hi_v) < k is known
    rounds = 0
    while (lo_v < hi_v) & (n_ge != k) & (rounds < 32):
        mid = lo_v + (hi_v - lo_v) * 0.5
        count = tl.sum((s >= mid).to(tl.int32), 0)
        enough = (count >= k) & (mid > lo_v)
        lo_v = tl.where(enough, mid, lo_v)
        n_ge = tl.where(enough, count, n_ge)
        hi_strict = hi_strict | ~enough
        hi_v = tl.where(enough, hi_v, mid)
        rounds += 1
    # Phase 2 (ties, adjacent floats, infinities): exact bisection over the keys from phase 1's bracket.
    lo = tl.where(lo_v < float("inf"), _order_key(lo_v.to(tl.int32, bitcast=True)),
                  tl.full([], -2147483648, tl.int64))
    hi = tl.where(hi_strict & (lo_v < hi_v), _order_key(hi_v.to(tl.int32, bitcast=True)) - 1,
                  tl.full([], 2147483647, tl.int64))
    n_ge = tl.sum((key >= lo).to(tl.int32), 0)
    while (lo < hi) & (n_ge != k):
        mid = lo + (hi - lo + 1) // 2
        count = tl.sum((key >= mid).to(tl.int32), 0)
        enough = count >= k
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid - 1)
        n_ge = tl.where(enough, count, n_ge)
    # Either exactly k keys reach lo, or lo is the k-th largest key: take the keys above it, then the
    # lowest-positioned ties.
    above = key > lo
    tie = key == lo
    n_above = tl.sum(above.to(tl.int32), 0)
    take = above | (tie & (tl.cumsum(tie.to(tl.int32), 0) <= k - n_above))
    pos = tl.cumsum(take.to(tl.int32), 0) - 1
    tl.store(OUT + row * k + pos, offs.to(tl.int64), mask=take)
    tl.store(CNT + row, k)


def select_topk(scores: torch.Tensor, k: int, *, counts: torch.Tensor | None = None) -> torch.Tensor:
    """int64 ``[..., k]``: positions of the ``k`` largest entries of each row of ``scores [..., n]`` (ascending
    positions; ties go to the lower position). One Triton program per row; ``torch.topk`` elsewhere.
    ``counts`` (int32, one entry per row), when given, is filled with ``k``."""
    n = scores.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= {n}, got {k}")
    if not _on_triton(scores) or n > _MAX_SELECT_ROW or scores.dtype != torch.float32:
        if counts is not None:
            counts.fill_(k)
        return select_topk_ref(scores, k)
    rows = scores.reshape(-1, n).contiguous()
    out = torch.empty(rows.shape[0], k, dtype=torch.int64, device=scores.device)
    cnt = counts if counts is not None else torch.empty(rows.shape[0], dtype=torch.int32, device=scores.device)
    _select_topk_kernel[(rows.shape[0],)](rows, out, cnt, n, k, NP=max(16, triton.next_power_of_2(n)),
                                         num_warps=8 if n > 4096 else 4)
    return out.view(*scores.shape[:-1], k)


def select_topk_ref(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.topk`` version of :func:`select_topk` (positions sorted ascending; tie order may differ)."""
    return scores.topk(k, dim=-1, sorted=False).indices.sort(-1).values


def quest_select(q: torch.Tensor, bounds: PageBounds, budget_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top pages per KV head by Quest's upper bound of ``q . k``, within ``budget_tokens``.

    ``q [B, Hq, D]`` (or ``[B, Hq, 1, D]``). Returns int64 page ``indices [B, Hkv, n]`` (ascending) and
    int32 ``counts [B, Hkv]`` for ``decode_attention(page_size=bounds.page_size)``. The first page
    (attention sink) and the newest page are always kept.
    """
    b, hkv, n_pages = bounds.kmax.shape[:3]
    n_keep = max(1, min(n_pages, budget_tokens // bounds.page_size))
    counts = torch.empty(b, hkv, dtype=torch.int32, device=q.device)
    top = select_topk(quest_page_scores(q, bounds), n_keep, counts=counts)
    return top, counts
