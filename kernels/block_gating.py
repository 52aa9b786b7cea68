"""SeerAttention-style block gating: which KV blocks each query block should attend to.

Algorithm (SeerAttention, Gao et al., 2024, arXiv:2410.13276):
  * **Training-free gate** (:func:`block_gate_scores`, :func:`select_blocks`, :func:`training_free_gate`):
    pool every ``block_size`` queries and keys (mean, max or min over the tokens of a block), score
    every block pair with the scaled pooled dot product (or, ``keys="tokens"``, the pooled query against
    every key, log-sum-exp per block: its exact attention mass), softmax over the visible KV blocks of
    each query block, then keep the top-k, above-threshold or top-p (``coverage``, as in FlexPrefill,
    Lai et al., 2025) blocks. The first ("sink") block and the
    diagonal block (the one holding the newest visible key) are always kept; with ``causal=True``
    blocks wholly in the future are never kept. Cheap: ``O((S / block)^2 * D)`` in plain PyTorch.
  * **Block-level ground truth** (:func:`attention_block_max`), what a learned gate would be trained on
    and what the bench checks the gate against: the attention map
    max-pooled over ``block_size x block_size`` blocks, ``gt[i, j] = max_{r in i, c in j} softmax(QK^T)
    [r, c]``, computed by a FlashAttention-2-style Triton kernel (Dao, 2023) that never materialises the
    map: a first pass over the keys finds each row's log-sum-exp, a second recomputes ``QK^T`` tile by
    tile and writes one max per block. Costs two ``QK^T`` products, no ``PV``.
    :func:`attention_block_max_ref` is the PyTorch reference.
  * SeerAttention's learnable AttnGate is not here: the reader uses the training-free gate, and a learned
    gate that nothing trained or used was removed (issue 25).

Shapes: batched ``q [B, Hq, Sq, D]``, ``k [B, Hkv, Sk, D]`` (SDPA layout), GQA/MQA with ``Hq % Hkv == 0``;
head dim 64 or 128 for the Triton kernel (any for the PyTorch gates); fp16, bf16, fp32; any lengths
(ragged last blocks are pooled over their valid tokens only). Causal masks align bottom-right as in
:mod:`block_sparse_attention`. Masks come out as :class:`KeptBlocks` for ``block_sparse_attention``.

Tested: triton 3.9.0 under ``TRITON_INTERPRET=1`` (CPU, torch 2.13) and triton 3.6.0 on an NVIDIA
H200 (torch 2.11). Known limits: no varlen (cu_seqlens) input; the gates score per query head.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import torch
import triton
import triton.language as tl
from torch import nn

from .block_mask import KeptBlocks
from .input_checks import check_interpretable

__all__ = [
    "attention_block_max",
    "attention_block_max_configs",
    "attention_block_max_ref",
    "block_gate_scores",
    "block_visibility",
    "pool_blocks",
    "select_blocks",
    "training_free_gate",
]

PoolMode = Literal["mean", "max", "min"]
_POOL_MODES = ("mean", "max", "min")
GateKeys = Literal["pooled", "tokens"]
GATE_KEYS = ("pooled", "tokens")
_LOG2E = 1.4426950408889634


def pool_blocks(x: torch.Tensor, block_size: int, mode: PoolMode = "mean") -> torch.Tensor:
    """Pool ``x [B, H, S, D]`` over blocks of ``block_size`` tokens -> fp32 ``[B, H, ceil(S / bs), D]``."""
    if mode not in _POOL_MODES:
        raise ValueError(f"pool mode must be one of {_POOL_MODES}, got {mode!r}")
    b, h, s, d = x.shape
    n_blocks = triton.cdiv(s, block_size)
    if mode == "mean":  # whole blocks in one reduction, a ragged last one in another (few launches)
        whole = s // block_size
        parts = [x[:, :, :whole * block_size].unflatten(2, (whole, block_size)).mean(3, dtype=torch.float32)]
        if whole < n_blocks:
            parts.append(x[:, :, whole * block_size:].mean(2, keepdim=True, dtype=torch.float32))
        return torch.cat(parts, 2) if len(parts) > 1 else parts[0]
    pad = n_blocks * block_size - s
    fill = {"max": float("-inf"), "min": float("inf")}[mode]
    xb = nn.functional.pad(x.float(), (0, 0, 0, pad), value=fill).view(b, h, n_blocks, block_size, d)
    return xb.amax(3) if mode == "max" else xb.amin(3)


def block_visibility(seqlen_q: int, seqlen_k: int, block_size: int, causal: bool,
                     device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-level masks ``[n_q_blocks, n_k_blocks]``: (visible, forced).

    ``visible[i, j]``: some query of block i may see some key of block j. ``forced[i, j]``: block j is the
    sink (j = 0) or the diagonal block of i (holding its newest visible key), and is visible.
    """
    n_q, n_k = triton.cdiv(seqlen_q, block_size), triton.cdiv(seqlen_k, block_size)
    qb = torch.arange(n_q, device=device)[:, None]
    kb = torch.arange(n_k, device=device)[None, :]
    diag = seqlen_k - seqlen_q
    last_row = torch.clamp((qb + 1) * block_size - 1, max=seqlen_q - 1)
    if causal:
        newest_key = torch.clamp(last_row + diag, max=seqlen_k - 1)  # may be < 0: block sees nothing
        visible = kb * block_size <= newest_key
    else:
        newest_key = torch.clamp(last_row + diag, 0, seqlen_k - 1)
        visible = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    forced = ((kb == 0) | (kb == torch.div(newest_key, block_size, rounding_mode="floor"))) & visible
    return visible, forced


def block_gate_scores(q: torch.Tensor, k: torch.Tensor, *, block_size: int = 64, causal: bool = True,
                      pool: PoolMode = "mean", sm_scale: float | None = None,
                      keys: GateKeys = "pooled") -> torch.Tensor:
    """Training-free gate: fp32 ``[B, Hq, n_q_blocks, n_k_blocks]`` block probabilities (rows sum to 1
    over visible blocks; invisible blocks score 0).

    ``keys="pooled"`` scores pooled queries against pooled keys (SeerAttention's cheapest estimate);
    ``keys="tokens"`` scores pooled queries against every key and reduces each block by log-sum-exp, so
    the probabilities are the pooled query's exact attention mass per block and a block holding one
    strongly matching key (a needle) is not averaged away. It costs
    ``O(n_q_blocks * Sk * D)``, still ``block_size`` times less than the attention itself.
    """
    if q.dim() != 4 or k.dim() != 4 or q.shape[1] % k.shape[1]:
        raise ValueError(f"need q [B, Hq, Sq, D], k [B, Hkv, Sk, D] with Hq % Hkv == 0: "
                         f"{tuple(q.shape)}, {tuple(k.shape)}")
    if keys not in GATE_KEYS:
        raise ValueError(f"keys must be one of {GATE_KEYS}, got {keys!r}")
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    qp = pool_blocks(q, block_size, pool)
    visible, _ = block_visibility(q.shape[2], k.shape[2], block_size, causal, q.device)
    if keys == "pooled":
        kp = pool_blocks(k, block_size, pool).repeat_interleave(q.shape[1] // k.shape[1], 1)
        logits = (qp @ kp.transpose(-1, -2)) * scale
    else:
        logits = _token_block_logits(qp, k, block_size, scale, causal, q.shape[2])
    logits = logits.masked_fill(~visible, float("-inf"))
    return torch.softmax(logits, -1).nan_to_num(0.0)  # query blocks that see nothing: all zeros


_TOKEN_GATE_ELEMENTS = 1 << 27  # fp32 scores per chunk of query blocks (512 MiB)


def _token_block_logits(qp: torch.Tensor, k: torch.Tensor, block_size: int, scale: float, causal: bool,
                      seqlen_q: int) -> torch.Tensor:
    """``logsumexp_{c in block j, c visible to block i} qp_i . k_c * scale`` -> ``[B, Hq, n_q, n_k]``."""
    b, hq, n_q, d = qp.shape
    hkv, sk = k.shape[1], k.shape[2]
    n_k = triton.cdiv(sk, block_size)
    pad = n_k * block_size - sk
    # Query heads grouped under their KV head: [B, Hkv, group * n_q, D] x [B, Hkv, D, Sk], no K copies.
    qg = qp.view(b, hkv, hq // hkv, n_q, d)
    kf = k.float()
    out = torch.empty(b, hkv, hq // hkv, n_q, n_k, dtype=torch.float32, device=qp.device)
    k_pos = torch.arange(sk, device=qp.device)
    newest = (torch.clamp((torch.arange(n_q, device=qp.device) + 1) * block_size - 1, max=seqlen_q - 1)
              + sk - seqlen_q)
    rows = max(1, _TOKEN_GATE_ELEMENTS // max(1, b * hq * (sk + pad)))
    for i0 in range(0, n_q, rows):
        i1 = min(n_q, i0 + rows)
        s = torch.einsum("bhgnd,bhsd->bhgns", qg[:, :, :, i0:i1], kf) * scale
        if causal:
            s = s.masked_fill(k_pos[None, :] > newest[i0:i1, None], float("-inf"))
        s = nn.functional.pad(s, (0, pad), value=float("-inf"))
        out[:, :, :, i0:i1] = s.view(*s.shape[:-1], n_k, block_size).logsumexp(-1)
    return out.view(b, hq, n_q, n_k)


def select_blocks(scores: torch.Tensor, *, seqlen_q: int, seqlen_k: int, block_size: int, causal: bool,
                  topk: int | None = None, threshold: float | None = None,
                  coverage: float | None = None) -> torch.Tensor:
    """Bool ``[B, H, n_q_blocks, n_k_blocks]``: per query block the ``topk`` best visible blocks, those
    scoring ``>= threshold``, or the fewest best blocks whose scores sum to ``coverage`` (top-p over the
    block probabilities, as FlexPrefill does; exactly one of the three), plus the sink and diagonal blocks."""
    if sum(x is not None for x in (topk, threshold, coverage)) != 1:
        raise ValueError("give exactly one of topk, threshold and coverage")
    visible, forced = block_visibility(seqlen_q, seqlen_k, block_size, causal, scores.device)
    if scores.shape[-2:] != visible.shape:
        raise ValueError(f"scores {tuple(scores.shape)} do not match {tuple(visible.shape)} blocks")
    ranked = scores.masked_fill(~visible, float("-inf"))
    if topk is not None:
        if topk < 0:
            raise ValueError(f"topk must be >= 0, got {topk}")
        keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        top = ranked.topk(min(topk, scores.shape[-1]), dim=-1).indices
        keep.scatter_(-1, top, True)
    elif threshold is not None:
        keep = ranked >= threshold
    else:
        if not 0.0 < coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {coverage}")
        order = ranked.argsort(-1, descending=True)
        mass = scores.masked_fill(~visible, 0.0).gather(-1, order)
        before = mass.cumsum(-1) - mass  # mass of the better blocks: keep while it is short of coverage
        keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        keep.scatter_(-1, order, before < coverage)
    return (keep & visible) | forced


def training_free_gate(q: torch.Tensor, k: torch.Tensor, *, block_size: int = 64, causal: bool = True,
                       topk: int | None = None, threshold: float | None = None, coverage: float | None = None,
                       pool: PoolMode = "mean", sm_scale: float | None = None,
                       keys: GateKeys = "pooled") -> KeptBlocks:
    """Score blocks from pooled Q and K (or every key) and keep the top-k / above-threshold
    ones, per query head."""
    scores = block_gate_scores(q, k, block_size=block_size, causal=causal, pool=pool,
                               sm_scale=sm_scale, keys=keys)
    mask = select_blocks(scores, seqlen_q=q.shape[2], seqlen_k=k.shape[2], block_size=block_size,
                         causal=causal, topk=topk, threshold=threshold, coverage=coverage)
    return KeptBlocks.from_mask(mask)


def attention_block_max_configs() -> list[triton.Config]:
    """Autotune space for the ground-truth kernel (one config when interpreting)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in [(4, 2), (4, 3), (8, 2)]]


@triton.jit
def _masked_scores(q, k_base, stride_ks, start_n, offs_m, seqlen_k, diag, qk_scale,
                   CAUSAL: tl.constexpr, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Scaled (log2-domain) scores of the query tile against keys [start_n, start_n + BLOCK)."""
    offs_n = start_n + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    in_k = offs_n < seqlen_k
    k = tl.load(k_base + offs_n[:, None].to(tl.int64) * stride_ks + offs_d[None, :],
                mask=in_k[:, None], other=0.0)
    qk = tl.dot(q, tl.trans(k)) * qk_scale
    keep = in_k[None, :]
    if CAUSAL:
        keep = keep & (offs_m[:, None] + diag >= offs_n[None, :])
    return tl.where(keep, qk, float("-inf"))


# The arguments that follow the prompt's length are not specialised: compiled once, not per divisibility
# pattern (see block_sparse_attention.LENGTH_ARGS).
@triton.autotune(configs=attention_block_max_configs(), key=["HEAD_DIM", "BLOCK", "CAUSAL"],
                 cache_results=True)  # a restarted server reads the tuned tile from disk
@triton.jit(do_not_specialize=["stride_ob", "stride_oh", "stride_om", "seqlen_q", "seqlen_k"])
def _attention_block_max_kernel(
    Q, K, OUT, stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
    stride_ob, stride_oh, stride_om, seqlen_q, seqlen_k, qk_scale, H, GROUP,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, CAUSAL: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    start_m = pid_m * BLOCK
    offs_m = start_m + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seqlen_q
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None].to(tl.int64) * stride_qs
                + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    k_base = K + b * stride_kb + (h // GROUP) * stride_kh
    diag = seqlen_k - seqlen_q
    vis_hi = seqlen_k
    if CAUSAL:
        vis_hi = tl.maximum(tl.minimum(seqlen_k, start_m + BLOCK + diag), 0)

    # Pass 1: each row's log-sum-exp (log2 domain), online as in FlashAttention.
    m_i = tl.full([BLOCK], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK], dtype=tl.float32)
    for start_n in range(0, vis_hi, BLOCK):
        qk = _masked_scores(q, k_base, stride_ks, start_n, offs_m, seqlen_k, diag, qk_scale,
                            CAUSAL, BLOCK, HEAD_DIM)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(qk - m_new[:, None]), 1)
        m_i = m_new
    lse2 = m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i))

    # Pass 2: exact probabilities tile by tile, reduced to one max per block.
    out_base = OUT + b * stride_ob + h * stride_oh + pid_m * stride_om
    for start_n in range(0, vis_hi, BLOCK):
        qk = _masked_scores(q, k_base, stride_ks, start_n, offs_m, seqlen_k, diag, qk_scale,
                            CAUSAL, BLOCK, HEAD_DIM)
        p = tl.where(row_ok[:, None], tl.exp2(qk - lse2[:, None]), 0.0)
        tl.store(out_base + start_n // BLOCK, tl.max(tl.max(p, 1), 0))


def attention_block_max(q: torch.Tensor, k: torch.Tensor, *, block_size: int = 64, causal: bool = False,
                        sm_scale: float | None = None) -> torch.Tensor:
    """Max-pooled attention probabilities: fp32 ``[B, Hq, ceil(Sq / bs), ceil(Sk / bs)]``.

    ``q [B, Hq, Sq, D]``, ``k [B, Hkv, Sk, D]``; head dim 64 or 128; ``block_size`` in 16..128.
    """
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[1] % k.shape[1]:
        raise ValueError(f"need q [B, Hq, Sq, D], k [B, Hkv, Sk, D] with Hq % Hkv == 0: "
                         f"{tuple(q.shape)}, {tuple(k.shape)}")
    if q.shape[-1] != k.shape[-1] or q.shape[-1] not in (64, 128):
        raise ValueError(f"head dim must be 64 or 128 and equal for q and k: {q.shape[-1]}, {k.shape[-1]}")
    if q.dtype != k.dtype or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q and k must share a dtype among fp16/bf16/fp32: {q.dtype}, {k.dtype}")
    check_interpretable(q.dtype)
    if block_size not in (16, 32, 64, 128):
        raise ValueError(f"block_size must be one of (16, 32, 64, 128), got {block_size}")
    if k.device != q.device:
        raise ValueError(f"k is on {k.device}, q on {q.device}")
    q, k = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k))
    b, hq, sq, d = q.shape
    sk = k.shape[2]
    n_q, n_k = triton.cdiv(sq, block_size), triton.cdiv(sk, block_size)
    out = torch.zeros(b, hq, n_q, n_k, dtype=torch.float32, device=q.device)
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    _attention_block_max_kernel[(n_q, b * hq)](
        q, k, out, *q.stride()[:3], *k.stride()[:3], *out.stride()[:3], sq, sk, scale * _LOG2E,
        hq, hq // k.shape[1], HEAD_DIM=d, BLOCK=block_size, CAUSAL=causal,
    )
    return out


def attention_block_max_ref(q: torch.Tensor, k: torch.Tensor, *, block_size: int = 64,
                            causal: bool = False, sm_scale: float | None = None) -> torch.Tensor:
    """PyTorch reference of :func:`attention_block_max` (materialises the fp32 attention map)."""
    b, hq, sq, d = q.shape
    sk = k.shape[2]
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    kf = k.float().repeat_interleave(hq // k.shape[1], 1)
    scores = (q.float() @ kf.transpose(-1, -2)) * scale
    if causal:
        rows = torch.arange(sq, device=q.device)[:, None] + (sk - sq)
        scores = scores.masked_fill(rows < torch.arange(sk, device=q.device)[None, :], float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    n_q, n_k = triton.cdiv(sq, block_size), triton.cdiv(sk, block_size)
    probs = nn.functional.pad(probs, (0, n_k * block_size - sk, 0, n_q * block_size - sq))
    return probs.view(b, hq, n_q, block_size, n_k, block_size).amax((3, 5))
