"""Block-sparse attention forward (prefill) in Triton, with a plain PyTorch reference.

Algorithm: FlashAttention-2 (Dao, 2023) online softmax, one program per (query block, batch x query
head), visiting only the key/value blocks a block mask keeps (the layout used by SeerAttention,
Gao et al., 2024, and FlexAttention's ``BlockMask``). The mask is a compact, per-query-block list of
kept KV block indices (:class:`KeptBlocks`, ``block_mask.py``), made from a boolean
``[B, Hm, n_q_blocks, n_k_blocks]`` mask by :meth:`KeptBlocks.from_mask`. Kept blocks lying fully inside
the visible region run without any element masking; only blocks on the causal diagonal or the ragged end
of the keys are masked.
Dense mode (``block_mask=None``) walks all visible blocks with no index loads. K/V tiles load through
pointers, or (``tma=True``, batched layout, Hopper+) through TMA tensor descriptors.

Supported:
  * layouts: batched ``q [B, Hq, Sq, D]``, ``k, v [B, Hkv, Sk, D]`` (SDPA layout), or varlen packed
    ``q [Tq, Hq, D]``, ``k, v [Tk, Hkv, D]`` with ``cu_seqlens_q``/``cu_seqlens_k`` (int32, B + 1);
  * GQA/MQA (``Hq`` a multiple of ``Hkv``); mask heads ``Hm`` dividing ``Hq`` (``Hq``, ``Hkv`` or 1);
  * head dim 64 and 128; fp16, bf16 (fp32 too, for CPU tests); any sequence lengths;
  * causal masking aligned bottom-right (query i sees key j iff ``j <= i + Sk - Sq``), as in
    FlashAttention-2; non-causal.
The mask's block size is both the query tile (``BLOCK_M``) and the KV block granularity; the kernel
may split a kept KV block into smaller ``BLOCK_N`` tiles (autotuned).

Contract: indices in each row of ``KeptBlocks.indices`` are sorted ascending in ``[0, count)``
(``from_mask`` and the gates in ``block_gating`` guarantee it); the kernel relies on this to split
unmasked from masked blocks. Rows with no visible key produce zeros (and ``lse = -inf``).

Tested: triton 3.9.0 under ``TRITON_INTERPRET=1`` (CPU, torch 2.13) and triton 3.6.0 on an NVIDIA
H200 (torch 2.11, CUDA 13). Known limits: forward only (no backward); no dropout, bias or softcap;
the last dimension of q/k/v must be contiguous (others are copied); bf16 is refused under
``TRITON_INTERPRET=1`` (the interpreter computes through numpy, which has no bf16).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .block_mask import KeptBlocks  # its home since the gates share it; still exported from here
from .input_checks import check_attention_inputs

__all__ = [
    "KeptBlocks",
    "block_sparse_attention",
    "block_sparse_attention_configs",
    "block_sparse_attention_ref",
]

_LOG2E = 1.4426950408889634
# Integer arguments that follow the prompt's length. Triton compiles a kernel again for each new pattern of
# "divisible by 16" among its integer arguments; left specialised, a reader meeting new prompt lengths paid
# ~1 s of compilation on about one question in six (rag_longcontext_realtimeqa.json, k=50/100: the first
# variant to meet a pattern stalled, the ones after it did not). Unspecialised they compile once.
LENGTH_ARGS = ["seqlen_q", "seqlen_k", "n_q_blocks", "stride_lb", "stride_lh", "stride_ib", "stride_ih",
               "stride_im", "stride_cb", "stride_ch", "LEN_BUCKET"]
# K/V tiles through TMA descriptors by default? Off: the H100 A/B (bench/results/kernels_tma.json) found dense
# within 2% at head dim 128 and up to 10% slower at 64; only block-sparse at 95% gained (8%), one run.
USE_TMA = False


def block_sparse_attention_configs() -> list[triton.Config]:
    """Autotune space: KV tile width, warps and pipeline depth (one small config when interpreting).

    Kept small on purpose: every config is compiled once and timed once per key (head dim, block,
    causal, dense, varlen, power-of-two length bucket) on the first call with that key.
    """
    if os.environ.get("TRITON_INTERPRET") == "1":
        return [triton.Config({"BLOCK_N": 16}, num_warps=4, num_stages=1, pre_hook=_descriptor_tiles)]
    return [
        triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=_descriptor_tiles)
        for bn, w, s in [(64, 4, 3), (64, 8, 3), (64, 8, 4), (128, 8, 2), (128, 8, 3)]
    ]


def _descriptor_tiles(nargs: dict) -> None:
    """A config's K/V tile as the TMA descriptors' block shape (set before each launch of that config)."""
    for name in ("K_DESC", "V_DESC"):
        if nargs[name] is not None:
            nargs[name].block_shape = [1, 1, nargs["BLOCK_N"], nargs["HEAD_DIM"]]


def _prune_configs(configs, named_args, **kwargs):
    block_m = kwargs.get("BLOCK_M", named_args.get("BLOCK_M"))
    kept = [c for c in configs if c.kwargs["BLOCK_N"] <= block_m]
    # Small query tiles do not need 8 warps. Configs that overflow shared memory are skipped by the
    # autotuner itself (it times them as infinitely slow).
    kept = [c for c in kept if block_m >= 128 or c.num_warps == 4] or kept
    fallback = triton.Config({"BLOCK_N": block_m}, num_warps=4, num_stages=2, pre_hook=_descriptor_tiles)
    return kept or [fallback]


@triton.jit
def _attend_tile(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, start_n, offs_m, k_len, diag,
                 qk_scale, K_DESC, V_DESC, b, kv_h, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                 BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, TMA: tl.constexpr):
    """One online-softmax step over keys [start_n, start_n + BLOCK_N).

    The scale is applied inside the exponent's argument (``qk * scale - m``: one FMA per score, as in
    Triton's fused-attention tutorial) instead of scaling the scores first: 4% of the sparse kernel's time.
    With ``TMA`` the K/V tiles come through the tensor descriptors (Hopper's bulk copies; rows past the
    keys' end read as zeros), else through pointers.
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    # Offsets within one sequence fit int32; the int64 batch/head/start offset is in k_base, v_base.
    k_ptrs = k_base + offs_n[:, None] * stride_ks + offs_d[None, :]
    v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :]
    if MASKED:
        in_k = offs_n < k_len
    if TMA:
        k = K_DESC.load([b, kv_h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
    elif MASKED:
        k = tl.load(k_ptrs, mask=in_k[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)
    qk = tl.dot(q, tl.trans(k))
    if MASKED:
        keep = in_k[None, :]
        if CAUSAL:
            keep = keep & (offs_m[:, None] + diag >= offs_n[None, :])
        qk = tl.where(keep, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)  # scale > 0, so max commutes with it
    p = tl.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    if TMA:
        v = V_DESC.load([b, kv_h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
    elif MASKED:
        v = tl.load(v_ptrs, mask=in_k[:, None], other=0.0)
    else:
        v = tl.load(v_ptrs)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_new


@triton.autotune(
    configs=block_sparse_attention_configs(),
    key=["HEAD_DIM", "BLOCK_M", "CAUSAL", "DENSE", "VARLEN", "TMA", "LEN_BUCKET"],
    prune_configs_by={"early_config_prune": _prune_configs},
    cache_results=True,  # a new process (a restarted server) reads the tuned tile from Triton's disk cache
)
@triton.jit(do_not_specialize=LENGTH_ARGS)
def _block_sparse_fwd_kernel(
    Q, K, V, O, LSE, KV_IDX, KV_CNT, CU_Q, CU_K, K_DESC, V_DESC,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_os,
    stride_lb, stride_lh, stride_ls, stride_ib, stride_ih, stride_im, stride_cb, stride_ch, stride_cm,
    seqlen_q, seqlen_k, n_q_blocks, qk_scale, H, GROUP, MASK_GROUP, LEN_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MAX_KEPT: tl.constexpr, CAUSAL: tl.constexpr,
    DENSE: tl.constexpr, VARLEN: tl.constexpr, TMA: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Heaviest (latest) query blocks first: with causal masking they have the most keys.
    pid_m = n_q_blocks - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    b64 = b.to(tl.int64)
    if VARLEN:
        q_start = tl.load(CU_Q + b)
        q_len = tl.load(CU_Q + b + 1) - q_start
        k_start = tl.load(CU_K + b)
        k_len = tl.load(CU_K + b + 1) - k_start
        q_off = q_start.to(tl.int64)
        k_off = k_start.to(tl.int64)
    else:
        q_len = seqlen_q
        k_len = seqlen_k
        q_off = 0
        k_off = 0
    start_m = pid_m * BLOCK_M
    if start_m >= q_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len
    q_base = Q + b64 * stride_qb + h * stride_qh + q_off * stride_qs
    q_ptrs = q_base + offs_m[:, None] * stride_qs + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    kv_h = h // GROUP
    k_base = K + b64 * stride_kb + kv_h * stride_kh + k_off * stride_ks
    v_base = V + b64 * stride_vb + kv_h * stride_vh + k_off * stride_vs

    # Keys [0, full_hi) are visible to every row of this block; keys >= vis_hi to none.
    diag = k_len - q_len
    if CAUSAL:
        vis_hi = tl.maximum(tl.minimum(k_len, start_m + BLOCK_M + diag), 0)
        full_hi = tl.maximum(tl.minimum(k_len, start_m + diag + 1), 0)
    else:
        vis_hi = k_len
        full_hi = k_len

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: fully masked rows stay NaN-free
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if DENSE:
        full_tiles_hi = (full_hi // BLOCK_N) * BLOCK_N
        for start_n in range(0, full_tiles_hi, BLOCK_N):
            acc, l_i, m_i = _attend_tile(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, start_n,
                                         offs_m, k_len, diag, qk_scale, K_DESC, V_DESC, b, kv_h,
                                         False, CAUSAL, BLOCK_N, HEAD_DIM, TMA)
        for start_n in range(full_tiles_hi, vis_hi, BLOCK_N):
            acc, l_i, m_i = _attend_tile(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, start_n,
                                         offs_m, k_len, diag, qk_scale, K_DESC, V_DESC, b, kv_h,
                                         True, CAUSAL, BLOCK_N, HEAD_DIM, TMA)
    else:
        mh = h // MASK_GROUP
        idx_base = KV_IDX + b64 * stride_ib + mh * stride_ih + pid_m * stride_im
        count = tl.load(KV_CNT + b64 * stride_cb + mh * stride_ch + pid_m * stride_cm)
        slots = tl.arange(0, MAX_KEPT)
        row = tl.load(idx_base + slots, mask=slots < count, other=2147483647)
        # Sorted indices: the first n_full kept blocks need no masking, the next ones up to n_vis do.
        n_full = tl.sum((row < full_hi // BLOCK_M).to(tl.int32), 0)
        n_vis = tl.sum((row < tl.cdiv(vis_hi, BLOCK_M)).to(tl.int32), 0)
        # The next kept block's index is loaded one step ahead, so the K/V loads of a step never wait
        # on the index load before them (an H200 A/B at 32k, 90% sparsity: 1.166x -> 1.204x FlexAttention;
        # with the fused scale 1.250x).
        nxt = tl.load(idx_base)
        for e in range(n_full):
            blk_start = nxt * BLOCK_M
            nxt = tl.load(idx_base + e + 1, mask=e + 1 < n_vis, other=0)
            for sub in tl.static_range(BLOCK_M // BLOCK_N):
                acc, l_i, m_i = _attend_tile(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs,
                                             blk_start + sub * BLOCK_N, offs_m, k_len, diag, qk_scale,
                                             K_DESC, V_DESC, b, kv_h, False, CAUSAL, BLOCK_N, HEAD_DIM, TMA)
        for e in range(n_full, n_vis):
            blk_start = tl.load(idx_base + e) * BLOCK_M
            for sub in tl.static_range(BLOCK_M // BLOCK_N):
                acc, l_i, m_i = _attend_tile(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs,
                                             blk_start + sub * BLOCK_N, offs_m, k_len, diag, qk_scale,
                                             K_DESC, V_DESC, b, kv_h, True, CAUSAL, BLOCK_N, HEAD_DIM, TMA)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    o_base = O + b64 * stride_ob + h * stride_oh + q_off * stride_os
    o_ptrs = o_base + offs_m[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None])
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_safe)) / 1.4426950408889634)
    lse_ptrs = LSE + b64 * stride_lb + h * stride_lh + q_off * stride_ls + offs_m * stride_ls
    tl.store(lse_ptrs, lse, mask=row_ok)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor | KeptBlocks | None = None,
    *,
    block_size: int = 64,
    causal: bool = False,
    sm_scale: float | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    return_lse: bool = False,
    tma: bool | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention over the kept ``block_size x block_size`` blocks (all blocks if ``block_mask`` is None).

    Shapes: batched ``q [B, Hq, Sq, D]``, ``k, v [B, Hkv, Sk, D]`` -> out like q; varlen ``q [Tq, Hq, D]``,
    ``k, v [Tk, Hkv, D]`` with int32 ``cu_seqlens_*`` of length B + 1 -> out ``[Tq, Hq, D]``.
    ``block_mask``: bool ``[B, Hm, ceil(max Sq / bs), ceil(max Sk / bs)]`` or :class:`KeptBlocks`, with
    ``Hq % Hm == 0``. ``lse`` (natural log, fp32) is ``[B, Hq, Sq]`` batched or ``[Hq, Tq]`` varlen.
    ``tma``: read K/V tiles through tensor descriptors (batched layout; Hopper or later, or the
    interpreter); None: :data:`USE_TMA`.
    """
    varlen = check_attention_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, block_size)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    head_dim = q.shape[-1]
    if varlen:
        n_batch = cu_seqlens_q.numel() - 1
        hq = q.shape[1]
        if max_seqlen_q is None:
            max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
        cu_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32).contiguous()
        cu_k = cu_seqlens_k.to(device=q.device, dtype=torch.int32).contiguous()
        qs, ks, vs = ((0, t.stride(1), t.stride(0)) for t in (q, k, v))
        seqlen_q, seqlen_k = max_seqlen_q, 0
    else:
        n_batch, hq, seqlen_q = q.shape[:3]
        seqlen_k = k.shape[2]
        max_seqlen_q = seqlen_q
        cu_q = cu_k = torch.empty(1, dtype=torch.int32, device=q.device)
        qs, ks, vs = ((t.stride(0), t.stride(1), t.stride(2)) for t in (q, k, v))
    out = torch.empty_like(q)
    os_ = (0, out.stride(1), out.stride(0)) if varlen else (out.stride(0), out.stride(1), out.stride(2))
    if varlen:
        lse = torch.empty(hq, q.shape[0], dtype=torch.float32, device=q.device)
        ls = (0, lse.stride(0), lse.stride(1))
    else:
        lse = torch.empty(n_batch, hq, seqlen_q, dtype=torch.float32, device=q.device)
        ls = lse.stride()
    n_q_blocks = triton.cdiv(max_seqlen_q, block_size)

    dense = block_mask is None
    if dense:
        idx = torch.zeros(1, 1, 1, 1, dtype=torch.int32, device=q.device)
        cnt = idx[..., 0]
        mask_group, max_kept = 1, 16
    else:
        kept = KeptBlocks.from_mask(block_mask) if isinstance(block_mask, torch.Tensor) else block_mask
        idx, cnt = kept.indices.to(torch.int32), kept.counts.to(torch.int32)
        if idx.dim() != 4 or cnt.shape != idx.shape[:3] or idx.shape[0] != n_batch:
            raise ValueError(f"block mask batch/shape mismatch: indices {tuple(idx.shape)}, "
                             f"counts {tuple(cnt.shape)}, batch {n_batch}")
        if hq % idx.shape[1] or idx.shape[2] < n_q_blocks:
            raise ValueError(f"block mask needs heads dividing {hq} and >= {n_q_blocks} query blocks, "
                             f"got {tuple(idx.shape)}")
        if idx.device != q.device:
            raise ValueError(f"block mask is on {idx.device}, q on {q.device}")
        mask_group = hq // idx.shape[1]
        max_kept = max(16, triton.next_power_of_2(idx.shape[-1]))
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    hkv = k.shape[1]
    grid = (n_q_blocks, n_batch * hq)
    k_desc, v_desc = _kv_descriptors(k, v, USE_TMA if tma is None else tma, varlen)
    _block_sparse_fwd_kernel[grid](
        q, k, v, out, lse, idx, cnt, cu_q, cu_k, k_desc, v_desc,
        *qs, *ks, *vs, *os_, *ls, *idx.stride()[:3], *cnt.stride(),
        seqlen_q, seqlen_k, n_q_blocks, sm_scale * _LOG2E, hq, hq // hkv, mask_group,
        min(triton.next_power_of_2(max_seqlen_q), 1 << 16),  # autotune key only: best tile varies with length
        HEAD_DIM=head_dim, BLOCK_M=block_size, MAX_KEPT=max_kept, CAUSAL=causal, DENSE=dense,
        VARLEN=varlen, TMA=k_desc is not None,
    )
    return (out, lse) if return_lse else out


def _kv_descriptors(k: torch.Tensor, v: torch.Tensor, tma: bool, varlen: bool) -> tuple:
    """Host tensor descriptors over the whole batched ``[B, Hkv, Sk, D]`` K and V (their tile shape is
    set per config by :func:`_descriptor_tiles`), or ``(None, None)`` for the pointer path."""
    if not tma:
        return None, None
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if varlen:
        raise ValueError("tma=True needs the batched layout (varlen sequences share one K/V tensor)")
    if not interpreting and torch.cuda.get_device_capability(k.device)[0] < 9:
        raise ValueError("tma=True needs a Hopper or later GPU (compute capability 9.0+)")
    # TMA: every stride but the last, and the base address, a multiple of 16 bytes
    if any(t.data_ptr() % 16 or any(st * t.element_size() % 16 for st in t.stride()[:-1]) for t in (k, v)):
        raise ValueError("tma=True needs K/V with 16-byte aligned rows and base addresses")
    return tuple(TensorDescriptor(t, shape=list(t.shape), strides=list(t.stride()),
                                  block_shape=[1, 1, 16, t.shape[-1]]) for t in (k, v))


def _token_mask(block_mask: torch.Tensor, seqlen_q: int, seqlen_k: int, block_size: int, causal: bool):
    """Bool ``[B, Hm, Sq, Sk]``: kept blocks expanded to tokens, intersected with the causal mask."""
    tok = block_mask.repeat_interleave(block_size, 2).repeat_interleave(block_size, 3)
    tok = tok[:, :, :seqlen_q, :seqlen_k]
    if causal:
        rows = torch.arange(seqlen_q, device=tok.device)[:, None] + (seqlen_k - seqlen_q)
        tok = tok & (rows >= torch.arange(seqlen_k, device=tok.device)[None, :])
    return tok


def _ref_batched(q, k, v, block_mask, block_size, causal, sm_scale):
    hq, hkv = q.shape[1], k.shape[1]
    sq, sk = q.shape[2], k.shape[2]
    if block_mask is None:
        n = (triton.cdiv(sq, block_size), triton.cdiv(sk, block_size))
        block_mask = torch.ones(q.shape[0], 1, *n, dtype=torch.bool, device=q.device)
    tok = _token_mask(block_mask, sq, sk, block_size, causal)
    tok = tok.repeat_interleave(hq // tok.shape[1], 1)
    kf = k.float().repeat_interleave(hq // hkv, 1)
    vf = v.float().repeat_interleave(hq // hkv, 1)
    scores = (q.float() @ kf.transpose(-1, -2)) * sm_scale
    scores = scores.masked_fill(~tok, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    probs = torch.exp(scores - lse.clamp_min(-1e30)[..., None])  # rows with no key: all zeros
    return (probs @ vf).to(q.dtype), lse


def block_sparse_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor | KeptBlocks | None = None,
    *,
    block_size: int = 64,
    causal: bool = False,
    sm_scale: float | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch reference of :func:`block_sparse_attention` (fp32 math, token-level mask).

    Same arguments and outputs; materialises ``[B, Hq, Sq, Sk]`` scores, so keep shapes moderate.
    """
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(q.shape[-1])
    if isinstance(block_mask, KeptBlocks):
        sk_max = k.shape[2] if cu_seqlens_k is None else int((cu_seqlens_k[1:] - cu_seqlens_k[:-1]).max())
        block_mask = block_mask.to_mask(triton.cdiv(sk_max, block_size))
    if cu_seqlens_q is None:
        out, lse = _ref_batched(q, k, v, block_mask, block_size, causal, sm_scale)
        return (out, lse) if return_lse else out
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[1], q.shape[0], dtype=torch.float32, device=q.device)
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(bounds_q) - 1):
        (q0, q1), (k0, k1) = bounds_q[b:b + 2], bounds_k[b:b + 2]
        mask_b = None if block_mask is None else block_mask[b:b + 1]
        o_b, lse_b = _ref_batched(q[q0:q1].transpose(0, 1)[None], k[k0:k1].transpose(0, 1)[None],
                                  v[k0:k1].transpose(0, 1)[None], mask_b, block_size, causal, sm_scale)
        out[q0:q1] = o_b[0].transpose(0, 1)
        lse[:, q0:q1] = lse_b[0]
    return (out, lse) if return_lse else out
