"""Device dispatch for the attention kernels: Triton on CUDA, the PyTorch references on the CPU.

Used by ``kernels/hf_attention.py``. Every function takes SDPA-layout tensors (``q [B, Hq, Sq, D]``,
``k, v [B, Hkv, Sk, D]``, causal masks aligned bottom-right) and returns ``[B, Hq, Sq, D]``.
The Triton path is taken when the tensors are on CUDA, in fp16/bf16, with head dim 64 or 128; anything
else uses PyTorch (chunked masked SDPA for block-sparse prefill, fp32 einsum for decode) so accuracy can be
measured on a CPU with the same selection logic.

Dense prefill runs ``dense_kernel``: the reader's default is ours (``kernels/modes.DENSE_KERNEL``), "sdpa"
is torch's backend choice. Warm, cuDNN beats our Triton dense mode at every measured shape (0.71-0.96x,
issue 22), but it builds a plan for every new shape, which a reader pays on each request (tens of ms;
``bench/bench_gate.py`` times the first call at an unseen length). Block-sparse prefill runs our kernel only
while the kept share of the causally visible blocks is at most ``SPARSE_MAX_KEPT``; above it, skipping blocks
no longer pays for that gap and the dense kernel runs instead.
"""

from __future__ import annotations

import torch
import triton

from .block_gating import block_gate_scores, select_blocks
from .block_mask import KeptBlocks
from .block_sparse_attention import block_sparse_attention
from .gate_select import kept_blocks, pooled_logits, select_by_rule, visible_block_count
from .sparse_decode import decode_attention, decode_attention_ref

__all__ = ["block_sparse_prefill", "decode", "dense_prefill", "gate_blocks", "gate_mask", "kept_share",
           "use_triton"]

_CPU_CHUNK_ROWS = 1024  # query rows per masked-SDPA call on the CPU: bounds the [Hq, rows, Sk] mask
# Our kernel's time scales with the kept blocks (H100, 32k, head dim 128: 17.7 ms dense, 8.7 ms at 50% kept),
# and dense it runs at 0.77-0.81x the fastest (warm) SDPA backend (bench/results/kernels.json), so it wins
# below a kept share of ~0.76 (4k) to ~0.81 (32k); at head dim 64 (0.89-0.96x) later still. 0.7 keeps
# a margin below both. Measured against SDPA: with dense_kernel="triton" (the default) the fallback is our
# own dense mode, against which the threshold is not measured.
SPARSE_MAX_KEPT = 0.7


def use_triton(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] in (64, 128)


def dense_prefill(q, k, v, scale: float, kernel: str = "sdpa") -> torch.Tensor:
    """Causal attention over every key: SDPA with the backend torch picks, or (``kernel="triton"``, where
    :func:`use_triton`) our kernel over all blocks (see the module docstring)."""
    sq, sk = q.shape[2], k.shape[2]
    if kernel == "triton" and use_triton(q):
        # 128-row tiles: the dense mode's measured configuration (bench/bench_kernels_h200.py dense)
        return block_sparse_attention(q, k, v, None, block_size=128, causal=True, sm_scale=scale)
    mask = None
    if sq != sk:  # bottom-right causal alignment (SDPA's is_causal aligns top-left)
        mask = (torch.arange(sk, device=q.device)[None, :]
                <= torch.arange(sk - sq, sk, device=q.device)[:, None])
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                            scale=scale, enable_gqa=True)


def gate_mask(q, k, *, block_size: int, topk: int | None, threshold: float | None, scale: float,
              coverage: float | None = None, keys: str = "pooled") -> torch.Tensor:
    """SeerAttention training-free gate (``kernels/block_gating.py``): bool ``[B, Hq, nq, nk]``
    kept blocks."""
    scores = block_gate_scores(q, k, block_size=block_size, causal=True, sm_scale=scale, keys=keys)
    return select_blocks(scores, seqlen_q=q.shape[2], seqlen_k=k.shape[2], block_size=block_size, causal=True,
                         topk=topk, threshold=threshold, coverage=coverage)


def gate_blocks(q, k, *, block_size: int, rule: str, value: float, scale: float, keys: str = "pooled",
                full_heads: torch.Tensor | None = None) -> KeptBlocks:
    """The gate's kept blocks (``rule``: "coverage", "topk" or "threshold" with its ``value``); query heads
    of the KV heads flagged in ``full_heads`` (bool ``[Hkv]``) keep every visible block. On the Triton path
    with pooled keys: one GEMM and one kernel, nothing read on the host (``kernels/gate_select.py``);
    otherwise the PyTorch gate (``block_gate_scores`` + :func:`select_by_rule`)."""
    sq, sk = q.shape[2], k.shape[2]
    if use_triton(q) and keys == "pooled":
        return kept_blocks(pooled_logits(q, k, block_size, scale), seqlen_q=sq, seqlen_k=sk,
                           block_size=block_size, rule=rule, value=value, full_heads=full_heads)
    scores = block_gate_scores(q, k, block_size=block_size, causal=True, sm_scale=scale, keys=keys)
    return KeptBlocks.from_mask(select_by_rule(scores, seqlen_q=sq, seqlen_k=sk, block_size=block_size,
                                               rule=rule, value=value, full_heads=full_heads))


def kept_share(mask: torch.Tensor | KeptBlocks, seqlen_q: int, seqlen_k: int, block_size: int) -> float:
    """The share of causally visible blocks that ``mask`` keeps, over all batch rows and heads."""
    kept, (b, h) = (mask.counts.sum(), mask.counts.shape[:2]) if isinstance(mask, KeptBlocks) \
        else (mask.sum(), mask.shape[:2])
    return float(kept) / (visible_block_count(seqlen_q, seqlen_k, block_size) * b * h)


def block_sparse_prefill(q, k, v, mask: torch.Tensor | KeptBlocks, *, block_size: int, scale: float,
                         share: float | None = None, dense_kernel: str = "sdpa") -> torch.Tensor:
    """Causal attention over the kept blocks of ``mask`` (bool ``[B, Hq, nq, nk]`` or :class:`KeptBlocks`);
    :func:`dense_prefill` where more than ``SPARSE_MAX_KEPT`` of the visible blocks are kept. ``share``: that
    :func:`kept_share`, where the caller has counted it already; ``dense_kernel``: :func:`dense_prefill`'s."""
    sq, sk = q.shape[2], k.shape[2]
    if use_triton(q):
        if share is None:
            share = kept_share(mask, sq, sk, block_size)
        if share > SPARSE_MAX_KEPT:
            return dense_prefill(q, k, v, scale, dense_kernel)
        return block_sparse_attention(q, k, v, mask, block_size=block_size, causal=True, sm_scale=scale)
    if isinstance(mask, KeptBlocks):
        mask = mask.to_mask(triton.cdiv(sk, block_size))
    out = torch.empty_like(q)
    k_pos = torch.arange(sk, device=q.device)
    for r0 in range(0, sq, _CPU_CHUNK_ROWS):
        r1 = min(sq, r0 + _CPU_CHUNK_ROWS)
        rows = torch.arange(r0, r1, device=q.device)
        block_rows = mask[:, :, rows // block_size]  # [B, Hq, rows, nk]
        tok = block_rows[..., k_pos // block_size] & (k_pos[None, :] <= rows[:, None] + (sk - sq))
        out[:, :, r0:r1] = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, r0:r1], k, v, attn_mask=tok, scale=scale, enable_gqa=True)
    return out


def decode(q, k, v, *, scale: float, indices=None, counts=None, page_size: int = 1,
           length=None) -> torch.Tensor:
    """One query token per sequence (``q [B, Hq, 1, D]``) over the cache or the selected tokens/pages;
    ``length`` (device tensor): ``k, v`` are preallocated buffers holding that many valid keys."""
    fn = decode_attention if use_triton(q) else decode_attention_ref
    return fn(q, k, v, indices=indices, counts=counts, page_size=page_size, sm_scale=scale, length=length)
