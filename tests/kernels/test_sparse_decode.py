"""Decode kernel (full, Quest pages, TidalDecode tokens) and Quest selection against their PyTorch references,
on CPU under TRITON_INTERPRET=1. bf16 and speed are checked on the GPU by bench/bench_kernels_h200.py."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel modules create their jit functions

import pytest
import torch

pytest.importorskip("triton")

from sparsa.kernels.quest import (
    PageBounds,
    quest_page_scores,
    quest_page_scores_ref,
    quest_select,
    select_topk,
    select_topk_ref,
)
from sparsa.kernels.sparse_decode import decode_attention, decode_attention_ref, tidal_select

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU interpreter tests")

TOLERANCE = {torch.float32: 1e-4, torch.float16: 4e-3}
# (B, Hq, Hkv, S, D): GQA with a ragged cache, MHA with 128-dim heads, MQA with 9 query heads (SmolLM2-like).
SHAPES = [(2, 8, 2, 100, 64), (1, 4, 4, 37, 128), (1, 9, 3, 300, 64)]


def _qkv(shape, dtype, seed=0):
    b, hq, hkv, s, d = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, d, generator=gen).to(dtype)
    k = torch.randn(b, hkv, s, d, generator=gen).to(dtype)
    v = torch.randn(b, hkv, s, d, generator=gen).to(dtype)
    return q, k, v


def _close(out, ref, dtype):
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.float(), ref.float(), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_full_decode_matches_reference(shape, dtype):
    q, k, v = _qkv(shape, dtype)
    out, lse = decode_attention(q, k, v, num_splits=3, return_lse=True)
    ref, ref_lse = decode_attention_ref(q, k, v, return_lse=True)
    _close(out, ref, dtype)
    torch.testing.assert_close(lse, ref_lse, atol=1e-3, rtol=1e-3)
    # The 4-d query layout of a model's attention gives the same result.
    _close(decode_attention(q[:, :, None], k, v), ref[:, :, None], dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_quest_pages_and_tidal_tokens_match_reference(shape):
    q, k, v = _qkv(shape, torch.float32, seed=1)
    idx, cnt = quest_select(q, PageBounds.from_keys(k, 16), 48)
    assert idx.shape[-1] == min(3, -(-shape[3] // 16)) and int(cnt.min()) == idx.shape[-1]
    # sink + newest
    assert bool((idx == 0).any(-1).all()) and bool((idx == (shape[3] - 1) // 16).any(-1).all())
    _close(decode_attention(q, k, v, indices=idx, counts=cnt, page_size=16),
           decode_attention_ref(q, k, v, indices=idx, counts=cnt, page_size=16), torch.float32)
    tok, tok_cnt = tidal_select(q, k, 20)
    assert tok.shape == (shape[0], 1, 20)
    _close(decode_attention(q, k, v, indices=tok, counts=tok_cnt),
           decode_attention_ref(q, k, v, indices=tok, counts=tok_cnt), torch.float32)


def test_unselected_tokens_are_never_read():
    q, k, v = _qkv((1, 4, 2, 64, 64), torch.float32, seed=2)
    idx = torch.tensor([[[0, 2], [1, 3]]])  # pages of 16 per KV head
    cnt = torch.tensor([[2, 1]])  # the second head uses only its first listed page
    poisoned_k, poisoned_v = k.clone(), v.clone()
    keep = torch.zeros(1, 2, 64, dtype=torch.bool)
    keep[0, 0, 0:16] = keep[0, 0, 32:48] = keep[0, 1, 16:32] = True
    poisoned_k[~keep] = float("nan")
    poisoned_v[~keep] = float("nan")
    out = decode_attention(q, poisoned_k, poisoned_v, indices=idx, counts=cnt, page_size=16)
    _close(out, decode_attention_ref(q, k, v, indices=idx, counts=cnt, page_size=16), torch.float32)


def test_page_bounds_update_equals_rebuild_and_scores_match_reference():
    q, k, _ = _qkv((2, 8, 2, 200, 64), torch.float32, seed=3)
    grown = PageBounds.from_keys(k[:, :, :150], 16).update(k[:, :, :151]).update(k)
    fresh = PageBounds.from_keys(k, 16)
    assert torch.equal(grown.kmax, fresh.kmax) and torch.equal(grown.kmin, fresh.kmin)
    scores, ref = quest_page_scores(q, fresh), quest_page_scores_ref(q, fresh)
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(scores))
    torch.testing.assert_close(scores[finite], ref[finite], atol=1e-3, rtol=1e-4)
    # The bound holds: no key of a page scores above its page's bound (summed over the group's heads).
    qk = torch.einsum("bhgd,bhsd->bhs", q.view(2, 2, 4, 64), k)
    page_max = torch.nn.functional.pad(qk, (0, 8), value=float("-inf")).view(2, 2, 13, 16).amax(-1)
    assert bool((page_max[finite] <= ref[finite] + 1e-4).all())
    with pytest.raises(ValueError, match="shrank"):
        fresh.update(k[:, :, :100])


@pytest.mark.parametrize(("n", "k"), [(100, 7), (2048, 128), (37, 37), (20, 1), (300, 40)])
def test_select_topk_picks_the_largest(n, k):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(3, 2, n, generator=gen)
    x[0, 0, 5] = float("inf")
    x[1, 1, :10] = 0.5  # ties
    x[2, 0] = -x[2, 0].abs()  # all negative
    x[2, 1] = x[2, 1].round()  # many ties: the bisection cannot stop early
    x[0, 1, :4] = torch.tensor([0.0, -0.0, -0.0, 0.0])[: min(4, n)]  # signed zeros order as equal
    counts = torch.zeros(3, 2, dtype=torch.int32)
    picked = select_topk(x, k, counts=counts)
    assert bool((counts == k).all())
    assert bool((picked.diff(dim=-1) > 0).all())
    torch.testing.assert_close(x.gather(-1, picked).sort(-1).values,
                               x.gather(-1, select_topk_ref(x, k)).sort(-1).values)
    with pytest.raises(ValueError):
        select_topk(x, n + 1)


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv((1, 4, 2, 32, 64), torch.float32)
    with pytest.raises(ValueError, match="one query token"):
        decode_attention(torch.randn(1, 4, 2, 64), k, v)
    with pytest.raises(ValueError, match="Hq % Hkv"):
        decode_attention(torch.randn(1, 3, 64), k, v)
    with pytest.raises(ValueError, match="both indices and counts"):
        decode_attention(q, k, v, indices=torch.zeros(1, 1, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="head dim"):
        decode_attention(torch.randn(1, 4, 32), torch.randn(1, 2, 8, 32), torch.randn(1, 2, 8, 32))


@pytest.mark.parametrize("gpu, head_dim, splits", [
    ((132, 228 * 1024, 227 * 1024), 128, 16),  # H200: one 192 KiB program per SM, 8 KV heads -> 16 splits
    ((132, 228 * 1024, 227 * 1024), 64, 33),  # two per SM
    ((108, 164 * 1024, 163 * 1024), 128, 13),  # A100: two stages fit, one program per SM
    ((58, 100 * 1024, 99 * 1024), 128, 7),  # ~99 KiB per block: 2 stages of 64-token tiles, one per SM
])
def test_launch_fits_shared_memory_and_splits_fill_one_wave(monkeypatch, gpu, head_dim, splits):
    from sparsa.kernels import sparse_decode as sd

    monkeypatch.setattr(sd, "LAUNCH", {"BLOCK_N": 128, "num_warps": 4, "num_stages": 3})  # the GPU setting
    monkeypatch.setattr(sd, "_sm_resources", lambda device: gpu)
    device = torch.device("cuda", 0)
    launch = sd._launch_for(device, head_dim, 2)
    assert sd._tile_bytes(launch, head_dim, 2) + sd._SMEM_RESERVE <= gpu[2]
    q = torch.empty(1, 32, head_dim, dtype=torch.bfloat16)
    assert sd._num_splits(q, 8, 131072, launch) == splits
    assert sd._num_splits(q, 8, 1024, launch) == 4  # short work: splits of at least 256 tokens
