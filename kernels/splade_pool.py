"""Fused SPLADE pooling: vocabulary projection, activation and max-pool over tokens in one kernel.

Algorithm (SPLADE, Formal et al. 2021; SPLADE v2 max pooling): for each sequence ``b`` and vocabulary
entry ``v``

    out[b, v] = max_{start_b <= t < end_b} log(1 + relu(hidden[b, t] . weight[v] + bias[v]))

Because ``log1p(relu(.))`` is monotone non-decreasing, it commutes with the max: the kernel keeps a
running max of the raw logits over token tiles (the matmul's epilogue reduces over tokens) and
applies bias, ReLU and log1p once per pooled value. The (batch x length x vocab) logits never exist
in memory: each program owns one (sequence, vocabulary tile) pair, loops over the sequence's token
tiles and the hidden dimension with ``tl.dot`` (fp32 accumulation), and writes only
``float32[B, V]``.

Shapes and dtypes:
    hidden  [B, L, D]  bfloat16, float16 or float32 (contiguous in D)
    weight  [V, D]     same dtype as ``hidden`` (the LM head / MLM decoder matrix)
    bias    [V]        float32 or None
    start, end [B]     int32: the pooled token range of each row (padding, or the first copy of an
                       echoed input, lies outside it); default ``0`` and ``L``
    returns [B, V]     float32; rows with ``end <= start`` are all zero

float32 inputs use TF32 tensor cores unless ``precise=True`` is passed.

Tested with triton 3.6.0 + torch 2.11 (H200, CUDA 13) and triton 3.9.0 under ``TRITON_INTERPRET=1``
on CPU (torch 2.13). Known limits: ``D`` up to 8192; the kernel is forward-only (no autograd), so
training uses :func:`splade_pool_ref` or a chunked torch path. Under ``TRITON_INTERPRET=1`` (triton
3.9, CPU) bf16 inputs come out wrong (the interpreter mishandles bf16 loads into ``tl.dot``; fp16 and
fp32, same code path, are exact), so CPU tests cover fp32/fp16 and bf16 is tested on CUDA.

This module imports only torch at import time; triton loads on the first call of
:func:`splade_pool`, so CPU code paths never need it.
"""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["splade_pool", "splade_pool_ref", "triton_available"]


def splade_pool_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    end: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain-torch reference: materialises the full ``float32[B, L, V]`` logits, then pools.

    Same arguments and result as :func:`splade_pool`; computes in float32 whatever the input dtype.
    """
    batch, length, _ = hidden.shape
    logits = hidden.float() @ weight.float().T  # [B, L, V]
    if bias is not None:
        logits = logits + bias.float()
    positions = torch.arange(length, device=hidden.device)
    start = torch.zeros(batch, dtype=torch.long, device=hidden.device) if start is None else start
    end = torch.full((batch,), length, dtype=torch.long, device=hidden.device) if end is None else end
    mask = (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])  # [B, L]
    activated = torch.log1p(torch.relu(logits)) * mask[:, :, None]
    return activated.amax(dim=1) if length else activated.new_zeros(batch, weight.shape[0])


def triton_available() -> bool:
    """Whether the Triton kernel can run here (a CUDA device, or ``TRITON_INTERPRET=1``)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or _interpreting()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _build_kernel(interpret: bool):
    """Define the Triton kernel on first use (keeps ``import triton`` out of module import).

    Cached per mode: ``triton.jit`` reads ``TRITON_INTERPRET`` when it wraps the function.
    """
    import triton
    import triton.language as tl

    def configs() -> list[triton.Config]:
        if interpret:
            return [triton.Config({"BLOCK_T": 16, "BLOCK_V": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
        # (BLOCK_T, BLOCK_V, warps, stages). Kept small so a new (D, V) tunes in seconds. A 16-config
        # sweep on an H200 (D=128, V=30522, B=256, L=330, bf16) picked 128/128/BLOCK_K=64/4 warps/2
        # stages at 260 TFLOP/s; a 128x256 fp32 accumulator needs 8 warps.
        space = [(128, 128, 4, 2), (64, 128, 4, 2), (128, 128, 8, 3), (128, 256, 8, 3), (64, 256, 8, 2)]
        return [triton.Config({"BLOCK_T": bt, "BLOCK_V": bv, "BLOCK_K": 64}, num_warps=w, num_stages=s)
                for bt, bv, w, s in space]

    @triton.autotune(configs=configs(), key=["D", "V"], cache_results=True)
    @triton.jit
    def _splade_pool_kernel(
        h_ptr, w_ptr, b_ptr, start_ptr, end_ptr, out_ptr,
        L, V, D,
        stride_hb, stride_ht, stride_wv, stride_ob,
        HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        pid_v = tl.program_id(0)
        row = tl.program_id(1)
        offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
        offs_t = tl.arange(0, BLOCK_T)
        offs_k = tl.arange(0, BLOCK_K)
        v_ok = offs_v < V
        t_begin = tl.load(start_ptr + row)
        t_end = tl.load(end_ptr + row)
        running = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
        h_row = h_ptr + row.to(tl.int64) * stride_hb
        for t0 in range(t_begin, t_end, BLOCK_T):
            t = t0 + offs_t
            t_ok = t < t_end
            acc = tl.zeros((BLOCK_T, BLOCK_V), dtype=tl.float32)
            for k0 in range(0, D, BLOCK_K):
                k = k0 + offs_k
                k_ok = k < D
                h = tl.load(h_row + t[:, None] * stride_ht + k[None, :],
                            mask=t_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_T, BLOCK_K]
                w = tl.load(w_ptr + offs_v[None, :] * stride_wv + k[:, None],
                            mask=v_ok[None, :] & k_ok[:, None], other=0.0)  # [BLOCK_K, BLOCK_V]
                acc = tl.dot(h, w, acc, input_precision=INPUT_PRECISION)
            acc = tl.where(t_ok[:, None], acc, float("-inf"))
            running = tl.maximum(running, tl.max(acc, axis=0))
        if HAS_BIAS:
            running += tl.load(b_ptr + offs_v, mask=v_ok, other=0.0)
        pooled = tl.log(1.0 + tl.maximum(running, 0.0))
        tl.store(out_ptr + row.to(tl.int64) * stride_ob + offs_v, pooled, mask=v_ok)

    return _splade_pool_kernel


def splade_pool(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    end: torch.Tensor | None = None,
    precise: bool = False,
) -> torch.Tensor:
    """Pooled SPLADE weights ``float32[B, V]`` from hidden states, without materialising the logits.

    Args:
        hidden: ``[B, L, D]`` last hidden states after the LM head's transform (bf16, fp16 or fp32).
        weight: ``[V, D]`` vocabulary projection, same dtype and device as ``hidden``.
        bias: ``[V]`` projection bias, or None.
        start, end: ``int32[B]`` pooled token range per row (default: the whole row).
        precise: for float32 inputs, use full fp32 products instead of TF32.
    """
    if hidden.ndim != 3 or weight.ndim != 2 or hidden.shape[2] != weight.shape[1]:
        raise ValueError(f"expected hidden [B, L, D] and weight [V, D], got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if hidden.dtype not in (torch.bfloat16, torch.float16, torch.float32) or weight.dtype != hidden.dtype:
        raise ValueError(f"hidden and weight must share one of bf16/fp16/fp32, got {hidden.dtype} and "
                         f"{weight.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"hidden is on {hidden.device} but weight is on {weight.device}")
    batch, length, dim = hidden.shape
    vocab = weight.shape[0]
    if dim > 8192:
        raise ValueError(f"hidden size {dim} > 8192 is not supported")
    if bias is not None and (bias.shape != (vocab,) or bias.device != hidden.device):
        raise ValueError(f"bias must be [{vocab}] on {hidden.device}, got {tuple(bias.shape)} on "
                         f"{bias.device}")
    device = hidden.device
    start = torch.zeros(batch, device=device) if start is None else start
    end = torch.full((batch,), length, device=device) if end is None else end
    start, end = start.to(device, torch.int32), end.to(device, torch.int32)
    if start.shape != (batch,) or end.shape != (batch,):
        raise ValueError(f"start and end must be [{batch}], got {tuple(start.shape)} and {tuple(end.shape)}")
    if not triton_available() or (device.type != "cuda" and not _interpreting()):
        raise RuntimeError(f"splade_pool needs triton and CUDA tensors (or TRITON_INTERPRET=1), got {device}")
    hidden = hidden if hidden.stride(2) == 1 else hidden.contiguous()
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    out = torch.empty(batch, vocab, dtype=torch.float32, device=device)
    if batch == 0:
        return out
    bias_arg = bias.float().contiguous() if bias is not None else out  # dummy pointer when HAS_BIAS=0
    kernel = _build_kernel(_interpreting())

    def grid(meta: dict) -> tuple[int, int]:
        return (-(-vocab // meta["BLOCK_V"]), batch)

    kernel[grid](
        hidden, weight, bias_arg, start, end, out,
        length, vocab, dim,
        hidden.stride(0), hidden.stride(1), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None,
        INPUT_PRECISION="tf32" if hidden.dtype == torch.float32 and not precise else "ieee",
    )
    return out
