"""Block-sparse attention kernel against its PyTorch reference, on CPU under TRITON_INTERPRET=1.

bf16 is checked on the GPU by bench/bench_attention.py (the interpreter has no bf16).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module creates its jit functions

import pytest
import torch

pytest.importorskip("triton")

from sparsa.kernels.block_sparse_attention import (
    KeptBlocks,
    block_sparse_attention,
    block_sparse_attention_ref,
)

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU interpreter tests")

TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.float16: (4e-3, 4e-3)}

# (B, Hq, Hkv, Sq, Sk, D, block): exact tiles, ragged + GQA, MQA with 128-dim and two KV tiles per
# block, fewer queries than keys, more queries than keys (early rows see nothing), a single query.
SHAPES = [
    (1, 2, 2, 32, 32, 64, 16),
    (2, 4, 2, 37, 37, 64, 16),
    (1, 4, 1, 45, 45, 128, 32),
    (1, 2, 1, 20, 50, 64, 16),
    (1, 2, 1, 50, 20, 64, 16),
    (1, 2, 2, 1, 17, 64, 16),
]


def _qkv(shape, dtype, seed=0):
    b, hq, hkv, sq, sk, d, _ = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, sq, d, generator=gen).to(dtype)
    k = torch.randn(b, hkv, sk, d, generator=gen).to(dtype)
    v = torch.randn(b, hkv, sk, d, generator=gen).to(dtype)
    return q, k, v


def _random_mask(b, h, sq, sk, block, seed=0, density=0.5):
    gen = torch.Generator().manual_seed(seed + 1)
    n_q, n_k = -(-sq // block), -(-sk // block)
    return torch.rand(b, h, n_q, n_k, generator=gen) < density


def _assert_close(out, ref, dtype):
    atol, rtol = TOLERANCE[dtype]
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, causal, sparse, dtype):
    torch.manual_seed(0)
    q, k, v = _qkv(shape, dtype)
    b, hq, _, sq, sk, _, block = shape
    mask = _random_mask(b, hq, sq, sk, block) if sparse else None
    out, lse = block_sparse_attention(q, k, v, mask, block_size=block, causal=causal, return_lse=True)
    ref, ref_lse = block_sparse_attention_ref(q, k, v, mask, block_size=block, causal=causal, return_lse=True)
    _assert_close(out, ref, dtype)
    seen = torch.isfinite(ref_lse)
    assert torch.equal(seen, torch.isfinite(lse))
    torch.testing.assert_close(lse[seen], ref_lse[seen], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_tensor_descriptor_path_matches_reference(shape, sparse):
    """K/V through TMA descriptors: ragged ends read as zeros there, and the masks must still hold."""
    q, k, v = _qkv(shape, torch.float16)
    b, hq, _, sq, sk, _, block = shape
    mask = _random_mask(b, hq, sq, sk, block) if sparse else None
    out, lse = block_sparse_attention(q, k, v, mask, block_size=block, causal=True, return_lse=True, tma=True)
    ref, ref_lse = block_sparse_attention_ref(q, k, v, mask, block_size=block, causal=True, return_lse=True)
    _assert_close(out, ref, torch.float16)
    assert torch.equal(torch.isfinite(lse), torch.isfinite(ref_lse))


def test_tensor_descriptor_path_refuses_varlen():
    cu = torch.tensor([0, 16], dtype=torch.int32)
    x = torch.randn(16, 2, 64)
    with pytest.raises(ValueError, match="batched layout"):
        block_sparse_attention(x, x, x, None, block_size=16, cu_seqlens_q=cu, cu_seqlens_k=cu, tma=True)


@pytest.mark.parametrize("mask_heads", [1, 2], ids=["broadcast", "per-kv-head"])
def test_mask_heads_and_kept_blocks_input(mask_heads):
    shape = (2, 4, 2, 40, 40, 64, 16)
    q, k, v = _qkv(shape, torch.float32, seed=3)
    mask = _random_mask(2, mask_heads, 40, 40, 16, seed=3)
    kept = KeptBlocks.from_mask(mask)
    assert torch.equal(kept.to_mask(mask.shape[-1]), mask)
    out = block_sparse_attention(q, k, v, kept, block_size=16, causal=True)
    ref = block_sparse_attention_ref(q, k, v, mask, block_size=16, causal=True)
    _assert_close(out, ref, torch.float32)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dropped_blocks_are_never_read(causal):
    """Poison every KV block no query block keeps with NaN: a single read would surface in the output."""
    shape = (1, 2, 1, 64, 64, 64, 16)
    q, k, v = _qkv(shape, torch.float32, seed=5)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., [0, 2]] = True
    mask[..., 3, 3] = True  # a block kept by one query block only is still read (and not poisoned)
    poisoned_k, poisoned_v = k.clone(), v.clone()
    poisoned_k[:, :, 16:32] = float("nan")
    poisoned_v[:, :, 16:32] = float("nan")
    ref = block_sparse_attention_ref(q, k, v, mask, block_size=16, causal=causal)
    for tma in (False, True):
        out = block_sparse_attention(q, poisoned_k, poisoned_v, mask, block_size=16, causal=causal, tma=tma)
        _assert_close(out, ref, torch.float32)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_varlen_matches_reference(causal, sparse):
    gen = torch.Generator().manual_seed(7)
    lens_q, lens_k = [17, 40, 1], [17, 33, 9]
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(sum(lens_q), 4, 64, generator=gen).half()
    k = torch.randn(sum(lens_k), 2, 64, generator=gen).half()
    v = torch.randn(sum(lens_k), 2, 64, generator=gen).half()
    mask = _random_mask(3, 4, max(lens_q), max(lens_k), 16, seed=7) if sparse else None
    kwargs = {"block_size": 16, "causal": causal, "cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k,
              "return_lse": True}
    out, lse = block_sparse_attention(q, k, v, mask, **kwargs)
    ref, ref_lse = block_sparse_attention_ref(q, k, v, mask, **kwargs)
    _assert_close(out, ref, torch.float16)
    assert torch.equal(torch.isfinite(lse), torch.isfinite(ref_lse))


def test_fully_masked_rows_are_zero():
    q, k, v = _qkv((1, 2, 1, 50, 20, 64, 16), torch.float32)
    out, lse = block_sparse_attention(q, k, v, block_size=16, causal=True, return_lse=True)
    assert torch.all(out[:, :, :30] == 0) and torch.all(torch.isneginf(lse[:, :, :30]))


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "dtype", "block", "match"),
    [
        ((1, 4, 16, 96), (1, 2, 16, 96), torch.float16, 16, "head dims"),
        ((1, 4, 16, 64), (1, 3, 16, 64), torch.float16, 16, "multiple of kv heads"),
        ((1, 4, 16, 64), (1, 2, 16, 64), torch.float16, 48, "block_size"),
        ((1, 4, 16, 64), (1, 2, 16, 64), torch.bfloat16, 16, "bf16"),
        ((4, 16, 64), (4, 16, 64), torch.float16, 16, r"\[B, H, S, D\]"),
    ],
    ids=["head-dim", "heads", "block", "bf16-interpreted", "layout"],
)
def test_rejects_bad_inputs(q_shape, k_shape, dtype, block, match):
    q, k = torch.zeros(q_shape, dtype=dtype), torch.zeros(k_shape, dtype=dtype)
    with pytest.raises(ValueError, match=match):
        block_sparse_attention(q, k, k, block_size=block)
