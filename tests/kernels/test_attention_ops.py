"""The attention dispatch (``kernels/attention_ops.py``): the kernel a dense prefill runs, and its output."""

import pytest
import torch

from sparsa.errors import ConfigError
from sparsa.kernels import attention_ops as ops
from sparsa.kernels.hf_attention import SparseAttentionConfig
from sparsa.rag.config import AttentionConfig


@pytest.mark.parametrize("sq", [200, 72], ids=["self", "last-queries"])
def test_dense_prefill_with_our_kernel_gives_sdpa_output(monkeypatch, sq):
    """``dense_kernel="triton"`` runs our kernel over every block (128-row tiles; causal aligned bottom-right
    when the queries are the last of the keys) and returns SDPA's attention."""
    monkeypatch.setattr(ops, "use_triton", lambda q: True)  # the Triton interpreter runs it on CPU tensors
    gen = torch.Generator().manual_seed(sq)
    q = torch.randn(1, 4, sq, 64, generator=gen)
    k, v = (torch.randn(1, 2, 200, 64, generator=gen) for _ in range(2))
    ours = ops.dense_prefill(q, k, v, 0.125, "triton")
    sdpa = ops.dense_prefill(q, k, v, 0.125, "sdpa")
    torch.testing.assert_close(ours, sdpa, atol=2e-4, rtol=2e-4)


def test_dense_kernel_is_a_checked_setting():
    assert AttentionConfig(dense_kernel="triton").kernel_settings()["dense_kernel"] == "triton"
    assert SparseAttentionConfig(dense_kernel="triton").validate().dense_kernel == "triton"
    with pytest.raises(ConfigError, match="dense_kernel"):
        AttentionConfig(dense_kernel="flash")
    with pytest.raises(ConfigError, match="dense_kernel"):
        SparseAttentionConfig(dense_kernel="flash").validate()


@pytest.mark.gpu
@pytest.mark.parametrize("sq", [4096, 1000], ids=["self", "last-queries"])
def test_dense_prefill_with_our_kernel_on_cuda(sq):
    """The compiled kernel (bf16, Qwen2.5-1.5B's 12 query / 2 KV heads, head dim 128) against SDPA."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gen = torch.Generator(device="cuda").manual_seed(sq)
    q = torch.randn(1, 12, sq, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(1, 2, 4096, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
            for _ in range(2))
    ours = ops.dense_prefill(q, k, v, 128 ** -0.5, "triton")
    sdpa = ops.dense_prefill(q, k, v, 128 ** -0.5, "sdpa")
    torch.testing.assert_close(ours.float(), sdpa.float(), atol=2e-2, rtol=2e-2)
