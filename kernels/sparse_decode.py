"""Decode attention (one new query token against a long KV cache) in Triton: full, or over selected tokens.

Algorithm: flash-decoding. The cache (or the list of selected tokens) is cut into splits; one program per
(split, batch x KV head) runs an online softmax for all ``Hq / Hkv`` query heads of its group at once
(GQA: each key is read once per group), and writes a partial (max, sum, weighted values); the last
split of each group to finish merges them (an arrival counter per group), so a step is one launch. Work
is spread over splits so that a single sequence fills the GPU.

Sparse mode reads only the tokens an index list names: ``indices [B, Hi, N]`` (``Hi`` = 1 shared by all
heads, or ``Hkv``) with ``counts [B, Hi]``. With ``page_size = P > 1`` each index names a page of P
consecutive tokens (Quest), with ``P = 1`` a single token (TidalDecode). Selection lives beside it:

  * :class:`PageBounds` / :func:`quest_select` (``kernels/quest.py``, re-exported here; Quest, Tang et al.,
    2024, arXiv:2406.10774): per page and KV head the element-wise min and max key;
    ``sum_d max(q_d min_d, q_d max_d)`` bounds ``q . k`` for every key of the page and is computed as
    ``relu(q) . max + min(q, 0) . min`` (two matmuls);
    the bounds are summed over the query heads of a group, and the top pages within a token budget are
    kept per KV head (the first "sink" page and the newest page always).
  * :func:`tidal_select` (TidalDecode, Yang et al., 2024, arXiv:2410.05076): a token-selection layer
    attends fully, sums its attention probabilities over all heads and keeps the top tokens; later
    layers reuse those positions (the caller keeps them; see ``kernels/hf_attention.py``).

Shapes: ``q [B, Hq, D]`` (or ``[B, Hq, 1, D]``), ``k, v [B, Hkv, S, D]`` (SDPA layout, last dim
contiguous); head dim 64 or 128; fp16/bf16 (fp32 for CPU tests). References: :func:`decode_attention_ref`.
Tested with ``TRITON_INTERPRET=1`` on the CPU (triton 3.9) and on an H200 by ``bench/bench_kernels_h200.py``.
Known limits: one query token per sequence; every sequence of the batch has the cache length ``S``.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from .input_checks import check_interpretable
from .quest import PageBounds, quest_page_scores, quest_page_scores_ref, quest_select, select_topk

__all__ = [
    "PageBounds",
    "decode_attention",
    "decode_attention_ref",
    "quest_page_scores",
    "quest_page_scores_ref",
    "quest_select",
    "select_topk",
    "tidal_select",
]

_LOG2E = 1.4426950408889634
_HEAD_DIMS = (64, 128)


# One fixed launch config, chosen on the H200 where it decodes (a probe, docs/results.md): a CUDA graph over
# a stack of layers, no L2 flush. Autotuning under do_bench had picked configs by a flushed-L2 timing that a
# model's decode step never sees. At head dim 128 the pipeline (3 stages of a 128-token K and V tile, 192 KiB
# of shared memory) allows one program per SM, so the split count fills exactly one wave (see _num_splits).
LAUNCH = ({"BLOCK_N": 16, "num_warps": 4, "num_stages": 1} if os.environ.get("TRITON_INTERPRET") == "1"
          else {"BLOCK_N": 128, "num_warps": 4, "num_stages": 3})


@triton.jit
def _decode_kernel(
    Q, K, V, IDX, CNT, LEN, M_OUT, L_OUT, ACC_OUT, ARRIVED, O, LSE,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_ib, stride_ih, stride_cb, stride_ch, stride_len,
    seqlen_k, n_work, split_len, n_splits, qk_scale, HKV, IDX_GROUP,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, GROUP_P2: tl.constexpr, HEAD_DIM: tl.constexpr,
    PAGE: tl.constexpr, SPARSE: tl.constexpr, HAS_LEN: tl.constexpr, BLOCK_N: tl.constexpr,
):
    split = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HKV).to(tl.int64)
    kvh = bh % HKV
    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    g_ok = offs_g < GROUP
    q_ptrs = Q + b * stride_qb + (kvh * GROUP + offs_g)[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=g_ok[:, None], other=0.0)
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    if HAS_LEN:  # a preallocated cache: only the first LEN[b] keys are valid
        seqlen = tl.load(LEN + b * stride_len).to(tl.int32)
    else:
        seqlen = seqlen_k
    if SPARSE:
        ih = kvh // IDX_GROUP
        idx_base = IDX + b * stride_ib + ih * stride_ih
        work = tl.load(CNT + b * stride_cb + ih * stride_ch) * PAGE
    elif HAS_LEN:
        work = tl.minimum(n_work, seqlen)
    else:
        work = n_work
    lo = split * split_len
    hi = tl.minimum(lo + split_len, work)

    m_i = tl.full([GROUP_PAD], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        slots = start + tl.arange(0, BLOCK_N)
        ok = slots < hi
        if SPARSE:
            page = tl.load(idx_base + slots // PAGE, mask=ok, other=0)
            tok = page * PAGE + slots % PAGE
            ok = ok & (tok < seqlen)
        else:
            tok = slots
        tok = tok.to(tl.int64)
        k = tl.load(k_base + tok[:, None] * stride_ks + offs_d[None, :], mask=ok[:, None], other=0.0)
        qk = tl.dot(q, tl.trans(k)) * qk_scale
        qk = tl.where(ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + tok[:, None] * stride_vs + offs_d[None, :], mask=ok[:, None], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new

    row = (bh // HKV) * (HKV * GROUP) + kvh * GROUP + offs_g  # flat (b, q head)
    tl.store(M_OUT + row * n_splits + split, m_i, mask=g_ok)
    tl.store(L_OUT + row * n_splits + split, l_i, mask=g_ok)
    acc_ptrs = ACC_OUT + (row * n_splits + split)[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(acc_ptrs, acc, mask=g_ok[:, None])
    # The last split of this (batch, KV head) to finish merges the group's partials, which saves a second
    # launch (and its ramp-up) per decode step. The barrier + acq_rel atomic publish every thread's stores.
    tl.debug_barrier()
    if tl.atomic_add(ARRIVED + bh, 1, sem="acq_rel") == n_splits - 1:
        _merge_splits(M_OUT, L_OUT, ACC_OUT, O, LSE, (bh // HKV) * (HKV * GROUP) + kvh * GROUP, n_splits,
                      GROUP, GROUP_P2, HEAD_DIM, 16)
        tl.store(ARRIVED + bh, 0)  # ready for the next call


@triton.jit
def _merge_splits(M_IN, L_IN, ACC_IN, O, LSE, row0, n_splits, GROUP: tl.constexpr, GROUP_P2: tl.constexpr,
                  HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr):
    """Combine the ``n_splits`` partial softmaxes of query rows ``row0 .. row0 + GROUP - 1``."""
    rows = row0 + tl.arange(0, GROUP_P2)
    r_ok = tl.arange(0, GROUP_P2) < GROUP
    offs_d = tl.arange(0, HEAD_DIM)
    offs_c = tl.arange(0, CHUNK)
    m_all = tl.full([GROUP_P2], -1.0e30, dtype=tl.float32)
    for s0 in range(0, n_splits, CHUNK):
        ok = r_ok[:, None] & (s0 + offs_c < n_splits)[None, :]
        m = tl.load(M_IN + rows[:, None] * n_splits + s0 + offs_c[None, :], mask=ok, other=-1.0e30,
                    cache_modifier=".cg")
        m_all = tl.maximum(m_all, tl.max(m, 1))
    l_tot = tl.zeros([GROUP_P2], dtype=tl.float32)
    acc = tl.zeros([GROUP_P2, HEAD_DIM], dtype=tl.float32)
    for s0 in range(0, n_splits, CHUNK):
        ok = r_ok[:, None] & (s0 + offs_c < n_splits)[None, :]
        part = rows[:, None] * n_splits + s0 + offs_c[None, :]
        w = tl.exp2(tl.load(M_IN + part, mask=ok, other=-1.0e30, cache_modifier=".cg") - m_all[:, None])
        w = tl.where(ok, w, 0.0)
        l_tot += tl.sum(w * tl.load(L_IN + part, mask=ok, other=0.0, cache_modifier=".cg"), 1)
        a = tl.load(ACC_IN + part[:, :, None] * HEAD_DIM + offs_d[None, None, :],
                    mask=ok[:, :, None], other=0.0, cache_modifier=".cg")
        acc += tl.sum(a * w[:, :, None], 1)
    l_safe = tl.where(l_tot == 0.0, 1.0, l_tot)
    tl.store(O + rows[:, None] * HEAD_DIM + offs_d[None, :], (acc / l_safe[:, None]).to(O.dtype.element_ty),
             mask=r_ok[:, None])
    tl.store(LSE + rows,
             tl.where(l_tot == 0.0, float("-inf"), (m_all + tl.log2(l_safe)) / 1.4426950408889634), mask=r_ok)


_ARRIVED: dict[torch.device, torch.Tensor] = {}


def _arrival_counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 counters, one per (batch, KV head): how many splits have finished. The merging program
    resets its counter, so the buffer stays zero between calls (calls on one device must not overlap)."""
    buf = _ARRIVED.get(device)
    if buf is None or buf.numel() < n:
        buf = _ARRIVED[device] = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
    return buf[:n].view(-1, 1) if n == 1 else buf[:n]


_SMEM_RESERVE = 16 * 1024  # shared memory besides the K/V pipeline (the query tile, dot operands)


@functools.cache
def _sm_resources(device: torch.device) -> tuple[int, int, int]:
    """(SM count, shared memory bytes per SM, per block with opt-in); H200 figures off CUDA."""
    if device.type != "cuda":
        return 132, 228 * 1024, 227 * 1024
    props = torch.cuda.get_device_properties(device)
    per_sm = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
    return props.multi_processor_count, per_sm, getattr(props, "shared_memory_per_block_optin", per_sm - 1024)


def _tile_bytes(launch: dict, head_dim: int, itemsize: int) -> int:
    return launch["num_stages"] * launch["BLOCK_N"] * head_dim * 2 * itemsize  # a K and a V tile per stage


def _launch_for(device: torch.device, head_dim: int, itemsize: int) -> dict:
    """``LAUNCH``, with fewer stages and then shorter tiles where a block gets less shared memory than on an
    H200 (A100: 163 KiB, most other GPUs ~99 KiB), so the kernel compiles everywhere."""
    launch = dict(LAUNCH)
    per_block = _sm_resources(device)[2]
    while _tile_bytes(launch, head_dim, itemsize) + _SMEM_RESERVE > per_block and launch["BLOCK_N"] > 16:
        if launch["num_stages"] > 2:
            launch["num_stages"] -= 1
        else:
            launch["BLOCK_N"] //= 2
    return launch


def _num_splits(q: torch.Tensor, groups: int, n_work: int, launch: dict) -> int:
    """Splits per (batch, KV head): one wave of resident programs, each at least 256 tokens long. H200, 8 KV
    heads, per layer of a CUDA-graphed layer stack (a probe at c4e838c, docs/results.md): head dim 128,
    one program per SM, 16 splits: 36.0 us at 32k (88% of a 4 GiB copy's bandwidth) and 123 us at 128k (103%),
    against 53 / 145 us with two waves (33 splits), whose second wave starts late while SMs idle. Head dim 64,
    two per SM, 33 splits: 24.2 / 68.7 us (the sweep's best: 22.7 / 67.3 us)."""
    sms, per_sm, _ = _sm_resources(q.device)
    resident = sms * max(1, per_sm // (_tile_bytes(launch, q.shape[-1], q.element_size()) + _SMEM_RESERVE))
    return max(1, min(resident // groups, triton.cdiv(max(n_work, 1), 256)))


def _check(q, k, v, indices, counts, page_size):
    if q.dim() == 4:
        if q.shape[2] != 1:
            raise ValueError(f"decode takes one query token per sequence, got q {tuple(q.shape)}")
        q = q[:, :, 0]
    if q.dim() != 3 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"need q [B, Hq, D], k = v [B, Hkv, S, D]: {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[1] % k.shape[1] or q.shape[-1] != k.shape[-1]:
        raise ValueError("batch, heads (Hq % Hkv == 0) or head dims disagree: q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.device != k.device or v.device != k.device:
        raise ValueError(f"q, k, v must share dtype and device: {q.dtype}/{k.dtype}/{v.dtype}")
    if (indices is None) != (counts is None):
        raise ValueError("sparse decode needs both indices and counts")
    if indices is not None:
        if indices.dim() != 3 or counts.shape != indices.shape[:2] or indices.shape[0] != q.shape[0]:
            raise ValueError(f"indices must be [B, Hi, N] and counts [B, Hi]: {tuple(indices.shape)}, "
                             f"{tuple(counts.shape)}")
        if k.shape[1] % indices.shape[1]:
            raise ValueError(f"index heads ({indices.shape[1]}) must divide kv heads ({k.shape[1]})")
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    return q


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                     indices: torch.Tensor | None = None,
                     counts: torch.Tensor | None = None, page_size: int = 1, sm_scale: float | None = None,
                     num_splits: int | None = None, return_lse: bool = False,
                     length: torch.Tensor | None = None):
    """Attention of one query token per sequence over the whole cache, or over the selected tokens/pages.

    ``q [B, Hq, D]`` or ``[B, Hq, 1, D]``; ``k, v [B, Hkv, S, D]``; sparse mode: int ``indices [B, Hi, N]``
    (token or page numbers, entries past ``counts [B, Hi]`` ignored, duplicates not allowed) with
    ``Hkv % Hi == 0``. ``length`` (int64 device tensor, one entry or one per batch row): ``k, v`` are
    preallocated buffers of which only the first ``length`` keys are valid (the others are never read; the
    splits are sized by ``S``). Returns ``out`` shaped like ``q`` (and fp32 natural-log ``lse [B, Hq]``).
    """
    q_in = q
    q = _check(q, k, v, indices, counts, page_size)
    if k.shape[-1] not in _HEAD_DIMS:
        raise ValueError(f"head dim must be one of {_HEAD_DIMS}, got {k.shape[-1]}")
    check_interpretable(q.dtype)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    b, hq, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    group = hq // hkv
    sparse = indices is not None
    if sparse:
        idx = indices if indices.dtype in (torch.int32, torch.int64) else indices.to(torch.int32)
        cnt = counts.to(torch.int32)
        n_work = idx.shape[-1] * page_size
        idx_group = hkv // idx.shape[1]
    else:
        # never read (SPARSE is off); avoids a fill kernel per call
        idx = cnt = _arrival_counters(q.device, 1)
        n_work, idx_group = s, 1
    launch = _launch_for(q.device, d, q.element_size()) if q.is_cuda else LAUNCH
    if num_splits is None:
        num_splits = _num_splits(q, b * hkv, n_work, launch)
    split_len = triton.cdiv(max(n_work, 1), num_splits)
    num_splits = triton.cdiv(max(n_work, 1), split_len)
    m_part = torch.empty(b * hq * num_splits, dtype=torch.float32, device=q.device)
    l_part = torch.empty_like(m_part)
    acc_part = torch.empty(b * hq * num_splits, d, dtype=torch.float32, device=q.device)
    out = torch.empty(b, hq, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, hq, dtype=torch.float32, device=q.device)
    has_len = length is not None
    _decode_kernel[(num_splits, b * hkv)](
        q, k, v, idx, cnt, length if has_len else cnt, m_part, l_part, acc_part,
        _arrival_counters(q.device, b * hkv), out, lse, q.stride(0), q.stride(1), *k.stride()[:3],
        *v.stride()[:3], idx.stride(0), idx.stride(1),
        cnt.stride(0), cnt.stride(1), 0 if not has_len or length.numel() == 1 else 1,
        s, n_work, split_len, num_splits, (sm_scale or 1.0 / math.sqrt(d)) * _LOG2E, hkv, idx_group,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), GROUP_P2=triton.next_power_of_2(group),
        HEAD_DIM=d, PAGE=page_size, SPARSE=sparse, HAS_LEN=has_len, **launch,
    )
    out = out.view(q_in.shape)
    return (out, lse) if return_lse else out


def selected_token_mask(indices: torch.Tensor, counts: torch.Tensor, page_size: int,
                        seqlen: int) -> torch.Tensor:
    """Bool ``[B, Hi, S]``: the tokens an index list selects."""
    b, hi, n = indices.shape
    valid = torch.arange(n, device=indices.device) < counts[..., None]
    tok = indices.long()[..., None] * page_size + torch.arange(page_size, device=indices.device)
    tok = torch.where(valid[..., None] & (tok < seqlen), tok, seqlen).reshape(b, hi, -1)
    mask = torch.zeros(b, hi, seqlen + 1, dtype=torch.bool, device=indices.device)
    return mask.scatter_(-1, tok, True)[..., :seqlen]


def decode_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                         indices: torch.Tensor | None = None, counts: torch.Tensor | None = None,
                         page_size: int = 1, sm_scale: float | None = None,
                         return_lse: bool = False, length: torch.Tensor | None = None):
    """PyTorch reference of :func:`decode_attention` (fp32 math; any head dim)."""
    q_in = q
    q = _check(q, k, v, indices, counts, page_size)
    hq, hkv, s = q.shape[1], k.shape[1], k.shape[2]
    group = hq // hkv
    scale = sm_scale or 1.0 / math.sqrt(q.shape[-1])
    qg = q.float().view(q.shape[0], hkv, group, -1)
    scores = torch.einsum("bhgd,bhsd->bhgs", qg, k.float()) * scale
    if indices is not None:
        keep = selected_token_mask(indices, counts, page_size, s)
        keep = keep.repeat_interleave(hkv // keep.shape[1], 1)
        scores = scores.masked_fill(~keep[:, :, None], float("-inf"))
    if length is not None:
        past = torch.arange(s, device=k.device) >= length.view(-1, 1, 1, 1)
        scores = scores.masked_fill(past, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    probs = torch.exp(scores - lse.clamp_min(-1e30)[..., None])
    out = torch.einsum("bhgs,bhsd->bhgd", probs, v.float()).reshape(q.shape).to(q.dtype).view(q_in.shape)
    return (out, lse.reshape(q.shape[:2])) if return_lse else out


def tidal_select(q: torch.Tensor, k: torch.Tensor, budget_tokens: int, sm_scale: float | None = None,
                 length: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """TidalDecode token selection: the ``budget_tokens`` positions with the largest attention probability
    summed over all query heads (one shared set per layer). Returns sorted int32 ``indices [B, 1, n]`` and
    ``counts [B, 1]`` for :func:`decode_attention` with ``page_size=1``. ``length`` (device tensor): only the
    first ``length`` keys of ``k`` are valid; positions past it rank last (decode attention masks them)."""
    if q.dim() == 4:
        q = q[:, :, 0]
    b, hq, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    scale = sm_scale or 1.0 / math.sqrt(d)
    scores = torch.einsum("bhgd,bhsd->bhgs", q.float().view(b, hkv, hq // hkv, d), k.float()) * scale
    if length is not None:
        past = torch.arange(s, device=k.device) >= length.view(-1, 1, 1, 1)
        scores = scores.masked_fill(past, float("-inf"))
    mass = torch.softmax(scores, -1).sum((1, 2))  # [B, S]
    if length is not None:
        mass = mass.masked_fill(past.view(-1, s), -1.0)
    n_keep = max(1, min(s, budget_tokens))
    top = mass.topk(n_keep, dim=-1, sorted=False).indices.sort(-1).values.to(torch.int32)
    return top[:, None].contiguous(), torch.full((b, 1), n_keep, dtype=torch.int32, device=q.device)
