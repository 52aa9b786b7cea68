"""Argument checks of the kernels' public wrappers, kept apart from the kernels' numerical code.

``check_interpretable`` is shared by the block-sparse prefill, the block gates and the sparse decode;
``check_attention_inputs`` validates :func:`block_sparse_attention.block_sparse_attention`'s q, k, v.
"""

from __future__ import annotations

import os

import torch

HEAD_DIMS = (64, 128)
BLOCK_SIZES = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_interpretable(dtype: torch.dtype) -> None:
    """The Triton interpreter computes through numpy, which has no bf16: refuse rather than return junk."""
    if dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        raise ValueError("bf16 is not supported under TRITON_INTERPRET=1; use fp16 or fp32 on the CPU")


def check_attention_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, block_size) -> bool:
    """Raise ValueError for inputs the block-sparse prefill cannot take; return whether they are varlen."""
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    if varlen and (cu_seqlens_q is None or cu_seqlens_k is None):
        raise ValueError("varlen needs both cu_seqlens_q and cu_seqlens_k")
    want_dim = 3 if varlen else 4
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != want_dim:
            layout = "[T, H, D] with cu_seqlens" if varlen else "[B, H, S, D]"
            raise ValueError(f"{name} must be {layout}, got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise ValueError(f"{name} dtype {t.dtype} unsupported; use one of {DTYPES}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
    check_interpretable(q.dtype)
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    head_dim = q.shape[-1]
    if head_dim not in HEAD_DIMS or k.shape[-1] != head_dim or v.shape[-1] != head_dim:
        raise ValueError(f"head dims must match and be one of {HEAD_DIMS}: {q.shape}, {k.shape}, {v.shape}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    hq, hkv = q.shape[1], k.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of kv heads ({hkv})")
    if not varlen and q.shape[0] != k.shape[0]:
        raise ValueError(f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}")
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {block_size}")
    return varlen
