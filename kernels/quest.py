"""Quest query-aware page selection for sparse decode (Tang et al., 2024, arXiv:2406.10774).

Per page of ``page_size`` tokens and KV head, the element-wise min and max key (:class:`PageBounds`,
updated incrementally as the cache grows). ``sum_d max(q_d min_d, q_d max_d)`` bounds ``q . k`` for
every key of the page; it equals ``relu(q) . max + min(q, 0) . min``, two small matmuls, fused with the
sum over the query heads of a GQA group in :func:`quest_page_scores` (Triton; reference
:func:`quest_page_scores_ref`). :func:`select_topk` picks the top pages of each row in one Triton program
per row (bisection over the values, then over the float bit pattern for ties, stopping once exactly k pass;
then a prefix sum compacts the winners),
replacing ``torch.topk``'s several launches; :func:`quest_select` chains the two. The first (sink) page
and the newest page are always kept. The pages feed ``sparse_decode.decode_attention(page_size=P)``.

:class:`PageBoundsBuffer` keeps the bounds of a preallocated (static) KV cache in fixed buffers: the number of
valid keys is a device tensor ``length``, each step rewrites only the page holding the newest key
(:func:`page_bounds`, reference :func:`page_bounds_ref`), and scoring masks the pages past ``length``, so
a decode step has fixed shapes and no host syncs and can be captured in a CUDA graph.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = ["PageBounds", "PageBoundsBuffer", "page_bounds", "page_bounds_ref", "quest_page_scores",
           "quest_page_scores_ref", "quest_select", "select_topk", "select_topk_ref"]

_HEAD_DIMS = (64, 128)
_MAX_SELECT_ROW = 16384  # pages per row handled in registers by select_topk; longer rows use torch.topk


def _on_triton(t: torch.Tensor) -> bool:
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


@dataclass
class PageBounds:
    """Quest page summaries: element-wise min and max key of each page, per KV head.

    ``kmin, kmax``: ``[B, Hkv, n_pages, D]`` in the keys' dtype (min/max are exact in any dtype, and
    half-width bounds halve the bytes the selection reads) over the first ``length`` tokens; :meth:`update`
    after the cache grows recomputes only the pages from the last (partial) one on, so a decode step costs
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


@dataclass
class PageBoundsBuffer:
    """Quest page bounds of a preallocated KV cache of capacity ``S``, kept in place (CUDA-graph safe).

    ``kmin, kmax``: ``[B, Hkv, ceil(S / page_size), D]`` in the keys' dtype; pages holding no key below
    ``length`` (an int64 device tensor of one entry, or one per batch row) are zeros, and scoring masks them.
    :meth:`update` rewrites only the page holding the newest key (position ``length - 1``) and :meth:`rebuild`
    every page, both into the same buffers, so a graph captured once replays against them.
    """

    kmin: torch.Tensor
    kmax: torch.Tensor
    page_size: int

    @staticmethod
    def from_keys(k: torch.Tensor, length: torch.Tensor, page_size: int) -> PageBoundsBuffer:
        b, h, s, d = k.shape
        shape = (b, h, triton.cdiv(s, page_size), d)
        bounds = PageBoundsBuffer(k.new_zeros(shape), k.new_zeros(shape), page_size)
        bounds.rebuild(k, length)
        return bounds

    def rebuild(self, k: torch.Tensor, length: torch.Tensor) -> None:
        page_bounds(k, length, self.kmin, self.kmax, self.page_size, newest_only=False)

    def update(self, k: torch.Tensor, length: torch.Tensor) -> None:
        page_bounds(k, length, self.kmin, self.kmax, self.page_size, newest_only=True)


@triton.jit
def _page_bounds_kernel(K, KMIN, KMAX, LEN, stride_kb, stride_kh, stride_ks, stride_bb, stride_bh, stride_bp,
                        stride_len, HKV, PAGE: tl.constexpr, PAGE_P2: tl.constexpr, HEAD_DIM: tl.constexpr,
                        NEWEST: tl.constexpr):
    """Min and max key of one page of one (batch, KV head): the newest key's page, or page
    ``program_id(0)``."""
    bh = tl.program_id(1)
    b = (bh // HKV).to(tl.int64)
    kvh = bh % HKV
    length = tl.load(LEN + b * stride_len).to(tl.int64)
    if NEWEST:
        page = (length - 1) // PAGE
    else:
        page = tl.program_id(0).to(tl.int64)
    offs_t = tl.arange(0, PAGE_P2)
    offs_d = tl.arange(0, HEAD_DIM)
    tok = page * PAGE + offs_t
    ok = (offs_t < PAGE) & (tok < length)
    keys = tl.load(K + b * stride_kb + kvh * stride_kh + tok[:, None] * stride_ks + offs_d[None, :],
                   mask=ok[:, None], other=0.0).to(tl.float32)
    kmax = tl.max(tl.where(ok[:, None], keys, float("-inf")), 0)
    kmin = tl.min(tl.where(ok[:, None], keys, float("inf")), 0)
    filled = tl.sum(ok.to(tl.int32), 0) > 0
    out = b * stride_bb + kvh * stride_bh + page * stride_bp + offs_d
    tl.store(KMAX + out, tl.where(filled, kmax, 0.0).to(KMAX.dtype.element_ty))
    tl.store(KMIN + out, tl.where(filled, kmin, 0.0).to(KMIN.dtype.element_ty))


def page_bounds(k: torch.Tensor, length: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, page_size: int,
                newest_only: bool) -> None:
    """Write the min/max key of the pages of ``k [B, Hkv, S, D]`` below ``length`` into ``kmin, kmax`` (pages
    without a valid key: zeros): every page, or with ``newest_only`` the page of position ``length - 1``."""
    b, h, _, d = k.shape
    if not (_on_triton(k) and d in _HEAD_DIMS and k.stride(-1) == 1 and kmax.is_contiguous()
            and kmin.is_contiguous()):
        page_bounds_ref(k, length, kmin, kmax, page_size, newest_only)
        return
    grid = (1 if newest_only else kmax.shape[2], b * h)
    _page_bounds_kernel[grid](k, kmin, kmax, length, *k.stride()[:3], *kmax.stride()[:3],
                              0 if length.numel() == 1 else 1, h, PAGE=page_size,
                              PAGE_P2=max(16, triton.next_power_of_2(page_size)), HEAD_DIM=d,
                              NEWEST=newest_only)


def page_bounds_ref(k: torch.Tensor, length: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor,
                    page_size: int, newest_only: bool) -> None:
    """PyTorch version of :func:`page_bounds` (no host syncs either)."""
    b, h, s, d = k.shape
    n_pages = kmax.shape[2]
    valid_len = length.view(-1, 1, 1)
    if newest_only:
        pages = ((length - 1) // page_size).view(-1, 1)  # [B or 1, 1]
        tok = pages[:, :, None] * page_size + torch.arange(page_size, device=k.device)  # [B or 1, 1, P]
        ok = (tok < valid_len)[..., None]
        where = tok.clamp_max(s - 1).expand(b, h, page_size)[..., None].expand(b, h, page_size, d)
        tiles = k.gather(2, where)
    else:
        pages = torch.arange(n_pages, device=k.device).view(1, -1)
        tok = torch.arange(n_pages * page_size, device=k.device).view(1, 1, -1)
        ok = (tok < valid_len).view(-1, 1, n_pages, page_size, 1)
        tiles = torch.nn.functional.pad(k, (0, 0, 0, n_pages * page_size - s))
        tiles = tiles.view(b, h, n_pages, page_size, d)
    axis = 2 if newest_only else 3
    filled = ok.any(axis)
    new_max = torch.where(filled, torch.where(ok, tiles, float("-inf")).amax(axis), 0.0).to(kmax.dtype)
    new_min = torch.where(filled, torch.where(ok, tiles, float("inf")).amin(axis), 0.0).to(kmin.dtype)
    if newest_only:
        where = pages.expand(b, h).reshape(b, h, 1, 1).expand(b, h, 1, d)
        kmax.scatter_(2, where, new_max[:, :, None].expand(b, h, 1, d))
        kmin.scatter_(2, where, new_min[:, :, None].expand(b, h, 1, d))
    else:
        kmax.copy_(new_max.expand(b, h, n_pages, d))
        kmin.copy_(new_min.expand(b, h, n_pages, d))


@triton.jit
def _quest_score_kernel(Q, KMAX, KMIN, S, LEN, stride_qb, stride_qh, stride_bb, stride_bh, stride_bp,
                        stride_len, n_pages, HKV, page_size, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                        HEAD_DIM: tl.constexpr, BLOCK_P: tl.constexpr, HAS_LEN: tl.constexpr):
    """Quest upper bounds of one (batch, KV head) for BLOCK_P pages, summed over the group's query heads. With
    ``HAS_LEN`` only the pages holding keys below ``LEN[b]`` count (the others score -inf)."""
    bh = tl.program_id(1)
    b = (bh // HKV).to(tl.int64)
    kvh = bh % HKV
    if HAS_LEN:
        n_valid = (tl.load(LEN + b * stride_len).to(tl.int32) + page_size - 1) // page_size
    else:
        n_valid = n_pages
    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < n_valid
    q = tl.load(Q + b * stride_qb + (kvh * GROUP + offs_g)[:, None] * stride_qh + offs_d[None, :],
                mask=(offs_g < GROUP)[:, None], other=0.0)
    base = b * stride_bb + kvh * stride_bh + offs_p[:, None].to(tl.int64) * stride_bp + offs_d[None, :]
    kmax = tl.load(KMAX + base, mask=p_ok[:, None], other=0.0)
    kmin = tl.load(KMIN + base, mask=p_ok[:, None], other=0.0)
    upper = tl.dot(kmax, tl.trans(tl.maximum(q, 0.0).to(kmax.dtype)))
    upper = tl.dot(kmin, tl.trans(tl.minimum(q, 0.0).to(kmin.dtype)), upper)
    score = tl.where(p_ok, tl.sum(upper, 1), float("-inf"))
    score = tl.where((offs_p == 0) | (offs_p == n_valid - 1), float("inf"), score)  # sink + newest page
    tl.store(S + bh.to(tl.int64) * n_pages + offs_p, score, mask=offs_p < n_pages)


def quest_page_scores(q: torch.Tensor, bounds: PageBounds | PageBoundsBuffer,
                      length: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 ``[B, Hkv, n_pages]``: Quest bounds summed over each group's query heads (first/last page: inf).
    ``length`` (int64 device tensor, one entry or one per batch row; with a :class:`PageBoundsBuffer`): the
    valid keys; pages past them score -inf and the page of the newest key is the last page."""
    if q.dim() == 4:
        q = q[:, :, 0]
    b, hq, d = q.shape
    hkv, n_pages = bounds.kmax.shape[1], bounds.kmax.shape[2]
    if not (_on_triton(q) and d in _HEAD_DIMS and bounds.kmax.stride(-1) == 1 and q.stride(-1) == 1):
        return quest_page_scores_ref(q, bounds, length)
    scores = torch.empty(b, hkv, n_pages, dtype=torch.float32, device=q.device)
    group = hq // hkv
    block_p = 64
    has_len = length is not None
    _quest_score_kernel[(triton.cdiv(n_pages, block_p), b * hkv)](
        q, bounds.kmax, bounds.kmin, scores, length if has_len else scores, q.stride(0), q.stride(1),
        *bounds.kmax.stride()[:3], 0 if not has_len or length.numel() == 1 else 1, n_pages, hkv,
        bounds.page_size,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=d, BLOCK_P=block_p,
        HAS_LEN=has_len)
    return scores


def quest_page_scores_ref(q: torch.Tensor, bounds: PageBounds | PageBoundsBuffer,
                          length: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch reference of :func:`quest_page_scores` (two matmuls: ``relu(q) . max + min(q, 0) . min``)."""
    if q.dim() == 4:
        q = q[:, :, 0]
    b, hq, d = q.shape
    hkv, n_pages = bounds.kmax.shape[1], bounds.kmax.shape[2]
    qg = q.to(bounds.kmax.dtype).view(b, hkv, hq // hkv, d).transpose(-1, -2)  # [B, Hkv, D, G]
    upper = bounds.kmax @ qg.clamp_min(0) + bounds.kmin @ qg.clamp_max(0)  # [B, Hkv, n_pages, G]
    score = upper.float().sum(-1)
    if length is None:
        n_valid = torch.full((1, 1, 1), n_pages, device=q.device)
    else:
        n_valid = (length.view(-1, 1, 1) + bounds.page_size - 1) // bounds.page_size
    pages = torch.arange(n_pages, device=q.device)
    score = torch.where(pages < n_valid, score, float("-inf"))
    return torch.where((pages == 0) | (pages == n_valid - 1), float("inf"), score)


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
    order-preserving 32-bit keys of the floats (phase 2 alone where fewer than k entries exceed -inf, as in
    a static cache's first pages: the -inf entries of lowest position fill the rest). Each round is one
    block-wide count reduction. On an H200 (128k tokens, 8 rows
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
    while (lo_v < hi_v) & (n_ge > k) & (rounds < 32):  # n_ge < k: -inf entries needed, phase 2 alone
        mid = lo_v + (hi_v - lo_v) * 0.5
        count = tl.sum((s >= mid).to(tl.int32), 0)
        enough = (count >= k) & (mid > lo_v)
        lo_v = tl.where(enough, mid, lo_v)
        n_ge = tl.where(enough, count, n_ge)
        hi_strict = hi_strict | ~enough
        hi_v = tl.where(enough, hi_v, mid)
        rounds += 1
    # Phase 2 (ties, adjacent floats, infinities): exact bisection over the keys from phase 1's bracket.
    lo = tl.where((lo_v < float("inf")) & (n_ge >= k), _order_key(lo_v.to(tl.int32, bitcast=True)),
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
    """int64 ``[..., k]``: positions of the ``k`` largest entries of each row of ``scores [..., n]``
    (ascending positions; ties go to the lower position). One Triton program per row; ``torch.topk``
    elsewhere. ``counts`` (int32, one entry per row), when given, is filled with ``k``."""
    n = scores.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= {n}, got {k}")
    if not _on_triton(scores) or n > _MAX_SELECT_ROW or scores.dtype != torch.float32:
        if counts is not None:
            counts.fill_(k)
        return select_topk_ref(scores, k)
    rows = scores.reshape(-1, n).contiguous()
    out = torch.empty(rows.shape[0], k, dtype=torch.int64, device=scores.device)
    cnt = (counts if counts is not None
           else torch.empty(rows.shape[0], dtype=torch.int32, device=scores.device))
    _select_topk_kernel[(rows.shape[0],)](rows, out, cnt, n, k, NP=max(16, triton.next_power_of_2(n)),
                                         num_warps=8 if n > 4096 else 4)
    return out.view(*scores.shape[:-1], k)


def select_topk_ref(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.topk`` version of :func:`select_topk` (positions sorted ascending; tie order may differ)."""
    return scores.topk(k, dim=-1, sorted=False).indices.sort(-1).values


def quest_select(q: torch.Tensor, bounds: PageBounds | PageBoundsBuffer, budget_tokens: int,
                 length: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top pages per KV head by Quest's upper bound of ``q . k``, within ``budget_tokens``.

    ``q [B, Hq, D]`` (or ``[B, Hq, 1, D]``). Returns int64 page ``indices [B, Hkv, n]`` (ascending) and
    int32 ``counts [B, Hkv]`` for ``decode_attention(page_size=bounds.page_size)``. The first page
    (attention sink) and the newest page are always kept. With a :class:`PageBoundsBuffer`, ``length`` (device
    tensor) counts the valid keys: while fewer than ``n`` pages hold keys, all of them are selected and the
    rest of the list names pages past ``length`` (ascending order puts them last; decode attention masks
    their keys).
    """
    b, hkv, n_pages = bounds.kmax.shape[:3]
    n_keep = max(1, min(n_pages, budget_tokens // bounds.page_size))
    counts = torch.empty(b, hkv, dtype=torch.int32, device=q.device)
    top = select_topk(quest_page_scores(q, bounds, length), n_keep, counts=counts)
    return top, counts
