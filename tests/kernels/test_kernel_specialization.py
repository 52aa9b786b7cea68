"""The prefill kernels compile once per tile configuration, not once per prompt length.

Triton compiles a kernel again for each new pattern of "divisible by 16" among its integer arguments; the
arguments that follow the prompt's length are declared ``do_not_specialize`` so that a reader meeting new
lengths does not stall on compilation (rag_longcontext_realtimeqa.json showed ~1 s stalls before). Needs a
GPU and compiled kernels:

    TRITON_INTERPRET=0 python -m pytest tests/kernels/test_kernel_specialization.py -m gpu
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available(),
                       reason="compiled kernels on a GPU (TRITON_INTERPRET=0)"),
]

# One autotune bucket (next power of two: 2,048), every mix of lengths, block counts and strides that are
# and are not multiples of 16.
LENGTHS = (1040, 1100, 1296, 1500, 2000, 1777)


def _compiled(jit_fn) -> int:
    """Binaries in the kernel's per-device caches (Triton 3.x keeps ``(kernel_cache, ...)`` per device)."""
    return sum(len(entry[0]) for entry in jit_fn.device_caches.values())


def _prefill(length: int) -> None:
    from sparsa.kernels.block_gating import attention_block_max
    from sparsa.kernels.block_sparse_attention import block_sparse_attention
    from sparsa.kernels.gate_select import kept_blocks

    gen = torch.Generator(device="cuda").manual_seed(length)
    q = torch.randn(1, 8, length, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(1, 2, length, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(1, 2, length, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    block_sparse_attention(q, k, v, None, block_size=128, causal=True)  # the dense path
    logits = attention_block_max(q, k, block_size=128, causal=True)
    kept = kept_blocks(logits, seqlen_q=length, seqlen_k=length, block_size=128, rule="coverage", value=0.9)
    block_sparse_attention(q, k, v, kept, block_size=128, causal=True)
    torch.cuda.synchronize()


def test_new_prompt_lengths_compile_nothing_new():
    from sparsa.kernels.block_gating import _attention_block_max_kernel
    from sparsa.kernels.block_sparse_attention import _block_sparse_fwd_kernel
    from sparsa.kernels.gate_select import _kept_blocks_kernel

    kernels = {"attention": _block_sparse_fwd_kernel.fn, "gate": _attention_block_max_kernel.fn,
               "select": _kept_blocks_kernel}
    _prefill(LENGTHS[0])  # autotunes and compiles each kernel's configurations for this bucket
    before = {name: _compiled(fn) for name, fn in kernels.items()}
    for length in LENGTHS[1:]:
        _prefill(length)
    after = {name: _compiled(fn) for name, fn in kernels.items()}
    assert after == before
