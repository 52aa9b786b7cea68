"""SPLADE pooling without the (batch x length x vocab) logits: chunked torch paths and dispatch.

Every path computes, for hidden states ``[B, L, D]``, a vocabulary projection ``weight [V, D]``,
``bias [V]`` and a pooled token range ``[start_b, end_b)`` per row,

    out[b, v] = max_t log(1 + relu(hidden[b, t] . weight[v] + bias[v]))       float32[B, V]

``log1p(relu(.))`` is monotone, so every path max-pools the raw logits and activates only the pooled
``[B, V]`` values; the bias is constant over tokens, so it is added after the max as well.

Paths:
- ``"triton"``: the fused GPU kernel (``sparsa.kernels.splade_pool``).
- ``"chunked"``: projection in vocabulary chunks, each chunk max-pooled at once; exact (fp32 or
  the input dtype), memory ``B * L * chunk``.
- ``"screened"`` (CPU): a low-precision pass finds, with a rigorous rounding-error bound, every
  ``(b, v)`` whose pooled logit can be positive; only those are recomputed exactly in float32. The
  result equals the fp32 ``"chunked"`` one (same products, same max) at the cost of the screen plus
  a small gather-matmul. The screen is an int8 kernel with the max over tokens fused in
  (``splade_cpu_kernel``, AVX512-VNNI or AVX2 builds; needs a compiler; with the AVX2 build 2.6% of
  splade-tiny's (doc, term) pairs pass on SciFact), else chunked bf16 matmuls + max in torch.
- ``"reference"``: ``splade_pool_ref``, full logits (tests only).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

from sparsa.kernels.splade_pool import splade_pool, splade_pool_ref, triton_available

logger = logging.getLogger(__name__)

PoolMethod = Literal["auto", "triton", "chunked", "screened", "reference"]
POOL_METHODS = ("auto", "triton", "chunked", "screened", "reference")

# bf16 keeps 8 significant bits: each rounded operand carries a relative error <= 2^-8, so a product
# of two rounded operands is off by <= (2^-7 + 2^-16) |h_i w_i|; the fp32 accumulation adds
# <= D * 2^-24 of the same sum. The screen doubles that for safety and also allows for the final
# rounding of the bf16 matmul output (<= 2^-8 of its magnitude).
_BF16_PRODUCT_ERROR = 2.0 * (2.0**-7 + 2.0**-16)
_BF16_OUTPUT_ERROR = 2.0 * 2.0**-8
_CHUNK_BYTES = 4 << 20


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), which makes screening pay."""
    checker = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(checker and checker())


def resolve_pool_method(method: PoolMethod, device: torch.device) -> str:
    """``auto``: the Triton kernel on CUDA; on CPU screening when the int8 kernel builds here (AVX2 or
    AVX512-VNNI) or the CPU has native bf16, else chunked fp32."""
    if method not in POOL_METHODS:
        raise ValueError(f"pooling method {method!r}: expected one of {', '.join(POOL_METHODS)}")
    if method != "auto":
        return method
    if device.type == "cuda":
        return "triton" if triton_available() else "chunked"
    from sparsa.retrieval.splade_cpu_kernel import fused_max_logits_available

    return "screened" if fused_max_logits_available() or cpu_has_fast_bf16() else "chunked"


def _fill_outside_range(hidden: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Copy of ``hidden`` whose positions outside ``[start, end)`` repeat the row's first pooled token.

    A max over duplicates of a pooled token equals the max over the pooled tokens, so the chunked
    paths need no mask. Rows with an empty range are left as they are (callers zero them).
    """
    length = hidden.shape[1]
    positions = torch.arange(length, device=hidden.device)
    outside = (positions[None, :] < start[:, None]) | (positions[None, :] >= end[:, None])  # [B, L]
    if not bool(outside.any()):
        return hidden
    first = hidden[torch.arange(hidden.shape[0], device=hidden.device), start.clamp(max=max(length - 1, 0))]
    return torch.where(outside[:, :, None], first[:, None, :], hidden)


def _chunked_max_logits(hidden: torch.Tensor, weight: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    """``max_t hidden[b, t] . weight[v]`` as ``[B, V]`` in ``hidden``'s dtype, one vocab chunk at a time.

    ``chunk_size=None`` sizes each ``[B * L, chunk]`` logits block to about 4 MiB, so it is still
    in cache when the max reads it (on a 2-core AVX512 machine, 4 MiB blocks ran the bf16 matmul
    plus max at ~310 GFLOP/s, 16 MiB blocks at ~120), rounded down to a multiple of 64 vocabulary rows:
    on an AVX2 EPYC core the fp32 matmul ran at ~30-36 GFLOP/s with chunks of 273-397 rows and at
    ~59-66 with 256-384.
    """
    batch, length, dim = hidden.shape
    flat = hidden.reshape(batch * length, dim)
    if chunk_size is None:
        fit = _CHUNK_BYTES // max(1, flat.shape[0] * flat.element_size())
        chunk_size = min(4096, max(64, fit // 64 * 64))
    out = torch.empty(batch, weight.shape[0], dtype=hidden.dtype, device=hidden.device)
    # One logits buffer for all chunks: a fresh multi-MiB tensor per chunk comes back from the OS as new
    # pages, and faulting them in cost ~20% of the pooling (AVX2 EPYC, 2 threads: 89 -> 113
    # GFLOP/s, same result).
    buffer = torch.empty(flat.shape[0] * min(chunk_size, weight.shape[0]), dtype=hidden.dtype,
                         device=hidden.device)
    for lo in range(0, weight.shape[0], chunk_size):
        rows = weight[lo : lo + chunk_size]
        block = buffer[: flat.shape[0] * rows.shape[0]].view(flat.shape[0], rows.shape[0])  # [B * L, chunk]
        torch.mm(flat, rows.T, out=block)
        torch.amax(block.view(batch, length, -1), dim=1, out=out[:, lo : lo + rows.shape[0]])
    return out


def splade_pool_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    start: torch.Tensor,
    end: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Exact pooled SPLADE weights ``float32[B, V]``, projecting ``chunk_size`` vocabulary rows at a time.

    Computes in ``hidden``'s dtype (pass fp32 for results equal to :func:`splade_pool_ref`).
    """
    filled = _fill_outside_range(hidden, start, end)
    pooled = _chunked_max_logits(filled, weight.to(hidden.dtype), chunk_size).float()
    if bias is not None:
        pooled += bias.float()
    pooled = torch.log1p(torch.relu_(pooled))
    pooled[end <= start] = 0.0
    return pooled


def splade_pool_screened(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    start: torch.Tensor,
    end: torch.Tensor,
    weight_bf16: torch.Tensor | None = None,
    weight_norms: torch.Tensor | None = None,
    chunk_size: int | None = None,
    weight_packed: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Exact fp32 pooled SPLADE weights ``float32[B, V]`` via a bounded low-precision screen (see module doc).

    Args:
        hidden: ``float32[B, L, D]``; weight: ``float32[V, D]``; bias: ``[V]`` or None.
        weight_bf16, weight_norms: ``weight`` in bf16 and its row norms ``float32[V]``, if the caller
            caches them across batches.
        weight_packed: ``splade_cpu_kernel.pack_weight_int8``'s dict: the screen's upper bounds then
            come from the fused int8 kernel (AVX2 or AVX512-VNNI) with its own rigorous bound
            (``int8_max_logits_upper``) instead of chunked bf16 matmuls + max.
    """
    hidden = hidden.float()
    weight = weight.float()
    if weight_packed is not None:  # the int8 kernel gives upper bounds directly
        from sparsa.retrieval.splade_cpu_kernel import int8_max_logits_upper

        upper = int8_max_logits_upper(hidden, start, end, weight_packed)  # [B, V]
    else:
        weight_bf16 = weight.bfloat16() if weight_bf16 is None else weight_bf16
        weight_norms = weight.norm(dim=1) if weight_norms is None else weight_norms
        filled = _fill_outside_range(hidden, start, end)
        approx = _chunked_max_logits(filled.bfloat16(), weight_bf16, chunk_size).float()  # [B, V]
        dim = hidden.shape[2]
        hidden_norms = filled.norm(dim=2).amax(dim=1)  # [B]: bounds |h . w| <= |h| |w| over every token
        slack = (_BF16_PRODUCT_ERROR + dim * 2.0**-23) * hidden_norms[:, None] * weight_norms[None, :]
        upper = approx + approx.abs() * _BF16_OUTPUT_ERROR + slack
    if bias is not None:
        upper += bias.float()
    candidates = upper > 0  # [B, V]: every (b, v) whose exact pooled logit can be positive
    candidates[end <= start] = False
    rows, cols = candidates.nonzero(as_tuple=True)  # row-major: each row's candidates together
    out = torch.zeros(hidden.shape[0], weight.shape[0], dtype=torch.float32, device=hidden.device)
    if rows.numel() == 0:
        return out
    # One exact fp32 product per document over its own tokens and candidates: a padded batched product
    # ran at 0.6x this (padding to the largest candidate count, and a strided gathered weight).
    values = torch.empty(rows.numel(), dtype=torch.float32, device=hidden.device)
    first = 0
    for b, count in enumerate(candidates.sum(dim=1).tolist()):
        if count:
            terms = cols[first : first + count]
            tokens = hidden[b, int(start[b]) : int(end[b])]
            values[first : first + count] = torch.mm(tokens, weight.index_select(0, terms).T).amax(dim=0)
            first += count
    if bias is not None:
        values += bias.float()[cols]
    out[rows, cols] = torch.log1p(torch.relu_(values))
    logger.debug("screen kept %.2f%% of %d pooled logits", 100.0 * rows.numel() / out.numel(), out.numel())
    return out


def _screen_cache(weight: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    """The screen's per-model tensors: the fused kernel's packed weight when that kernel runs here (see
    ``splade_cpu_kernel.cpu_isa``), else the torch screen's bf16 weight and row norms."""
    from sparsa.retrieval.splade_cpu_kernel import fused_max_logits_available, pack_weight_int8

    if device.type == "cpu" and fused_max_logits_available():
        return {"weight_packed": pack_weight_int8(weight.float().cpu())}
    return {"weight_bf16": weight.bfloat16(), "weight_norms": weight.float().norm(dim=1)}


def pool_splade(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    start: torch.Tensor,
    end: torch.Tensor,
    method: str,
    cache: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Dispatch to one pooling path (already resolved by :func:`resolve_pool_method`); ``float32[B, V]``.

    ``cache`` holds per-model derived tensors (packed or bf16 weight, norms) between calls.
    """
    if method == "triton":
        return splade_pool(hidden, weight.to(hidden.dtype), bias, start, end)
    if method == "chunked":
        return splade_pool_chunked(hidden, weight, bias, start, end)
    if method == "screened":
        cache = {} if cache is None else cache
        if not cache:  # threads may race here: one update with every entry, so none is seen half-filled
            cache.update(_screen_cache(weight, hidden.device))
        return splade_pool_screened(
            hidden, weight, bias, start, end, cache.get("weight_bf16"), cache.get("weight_norms"),
            weight_packed=cache.get("weight_packed"),
        )
    if method == "reference":
        return splade_pool_ref(hidden, weight, bias, start, end)
    raise ValueError(f"pooling method {method!r}: expected one of {', '.join(POOL_METHODS[1:])}")
