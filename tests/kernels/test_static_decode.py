"""Decode kernels over a preallocated (static) KV cache, the length a device tensor: in-place Quest page
bounds, page scores, page/token selection and decode attention against their PyTorch references and against
the same computation on the cache cut to its length. CPU, under TRITON_INTERPRET=1."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel modules create their jit functions

import pytest
import torch

pytest.importorskip("triton")

from sparsa.kernels.quest import (
    PageBounds,
    PageBoundsBuffer,
    page_bounds,
    page_bounds_ref,
    quest_page_scores,
    quest_page_scores_ref,
    quest_select,
    select_topk,
    select_topk_ref,
)
from sparsa.kernels.sparse_decode import decode_attention, decode_attention_ref, tidal_select

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU interpreter tests")


def _qkv(b, hq, hkv, s, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, d, generator=gen), torch.randn(b, hkv, s, d, generator=gen),
            torch.randn(b, hkv, s, d, generator=gen))


def _valid_pages(bounds, length: int):
    n = -(-length // bounds.page_size)
    return bounds.kmin[:, :, :n], bounds.kmax[:, :, :n]


@pytest.mark.parametrize("kernel", [page_bounds, page_bounds_ref], ids=["triton", "reference"])
@pytest.mark.parametrize("page", [16, 64])
def test_in_place_bounds_equal_a_rebuild_after_many_steps(kernel, page, monkeypatch):
    """Grow the valid length one key at a time (as decode does) across several page boundaries, updating only
    the newest page in place: the buffers equal PageBounds.from_keys of the keys so far at every step, and the
    pages past the length stay zero."""
    from sparsa.kernels import quest

    monkeypatch.setattr(quest, "page_bounds", kernel)
    _, k, _ = _qkv(2, 4, 2, 320, 64, seed=1)
    length = torch.tensor([70])
    bounds = PageBoundsBuffer.from_keys(k, length, page)
    assert bounds.kmax.shape == (2, 2, -(-320 // page), 64)
    for n in range(71, 320, 7 if kernel is page_bounds else 1):
        length.fill_(n)
        for m in range(n - (7 if kernel is page_bounds else 1) + 1, n + 1):  # every length in between
            length.fill_(m)
            bounds.update(k, length)
        fresh = PageBounds.from_keys(k[:, :, :n], page)
        kmin, kmax = _valid_pages(bounds, n)
        assert torch.equal(kmin, fresh.kmin) and torch.equal(kmax, fresh.kmax), n
        assert not bounds.kmax[:, :, kmax.shape[2]:].any() and not bounds.kmin[:, :, kmin.shape[2]:].any()
    rebuilt = PageBoundsBuffer.from_keys(k, length, page)
    assert torch.equal(rebuilt.kmax, bounds.kmax) and torch.equal(rebuilt.kmin, bounds.kmin)


def test_bounds_kernel_matches_reference_per_batch_row_lengths():
    _, k, _ = _qkv(3, 4, 2, 200, 128, seed=2)
    length = torch.tensor([1, 64, 200])
    for newest in (False, True):
        outs = []
        for fn in (page_bounds, page_bounds_ref):
            kmin, kmax = (torch.full((3, 2, 4, 128), 7.0) for _ in range(2))
            fn(k, length, kmin, kmax, 64, newest_only=newest)
            outs.append((kmin, kmax))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("length", [1, 33, 64, 65, 250, 256])
def test_scores_over_the_buffer_match_the_cut_cache(length):
    q, k, _ = _qkv(2, 8, 2, 256, 64, seed=3)
    n = torch.tensor([length])
    buffer = PageBoundsBuffer.from_keys(k, n, 16)
    scores, ref = quest_page_scores(q, buffer, n), quest_page_scores_ref(q, buffer, n)
    cut = quest_page_scores_ref(q, PageBounds.from_keys(k[:, :, :length], 16))
    n_valid = cut.shape[-1]
    assert torch.equal(torch.isinf(scores), torch.isinf(ref))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(scores[finite], ref[finite], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(ref[..., :n_valid], cut)
    assert bool((ref[..., n_valid:] == float("-inf")).all())


def test_select_topk_with_fewer_valid_entries_than_k():
    """While fewer pages hold keys than the budget keeps, every valid page is selected and the list ends with
    pages past the length (-inf scores), which decode attention then masks."""
    x = torch.randn(2, 3, 40)
    x[..., 5:] = float("-inf")
    x[..., 0] = x[..., 4] = float("inf")
    for fn in (select_topk, select_topk_ref):
        picked = fn(x, 8)
        assert bool((picked[..., :5] == torch.arange(5)).all()) and bool((picked[..., 5:] >= 5).all())


@pytest.mark.parametrize("length", [1, 50, 129, 300])
def test_decode_over_the_buffer_equals_decode_over_the_cut_cache(length):
    q, k, v = _qkv(1, 8, 2, 300, 64, seed=4)
    n = torch.tensor([length])
    garbage_k, garbage_v = k.clone(), v.clone()
    garbage_k[:, :, length:] = float("nan")  # a static cache's stale tail is never read
    garbage_v[:, :, length:] = float("nan")
    cut = decode_attention_ref(q, k[:, :, :length], v[:, :, :length])
    for fn, keys, values in ((decode_attention, garbage_k, garbage_v), (decode_attention_ref, k, v)):
        torch.testing.assert_close(fn(q, keys, values, length=n), cut, atol=1e-4, rtol=1e-4)
    # Quest over the buffer: the same pages as over the cut cache, the same output.
    buffer = PageBoundsBuffer.from_keys(k, n, 16)
    idx, cnt = quest_select(q, buffer, 64, n)
    cut_idx, cut_cnt = quest_select(q, PageBounds.from_keys(k[:, :, :length], 16), 64)
    assert torch.equal(idx[..., :cut_idx.shape[-1]], cut_idx)
    sparse = decode_attention(q, garbage_k, garbage_v, indices=idx, counts=cnt, page_size=16, length=n)
    on_cut = decode_attention_ref(q, k[:, :, :length], v[:, :, :length], indices=cut_idx, counts=cut_cnt,
                                  page_size=16)
    torch.testing.assert_close(sparse, on_cut, atol=1e-4, rtol=1e-4)
    on_buffer = decode_attention_ref(q, k, v, indices=idx, counts=cnt, page_size=16, length=n)
    torch.testing.assert_close(sparse, on_buffer, atol=1e-4, rtol=1e-4)
    # TidalDecode tokens: the same positions among the valid keys.
    tok, tok_cnt = tidal_select(q, k, 40, length=n)
    cut_tok, _ = tidal_select(q, k[:, :, :length], 40)
    assert torch.equal(tok[..., :cut_tok.shape[-1]], cut_tok)
    torch.testing.assert_close(
        decode_attention(q, garbage_k, garbage_v, indices=tok, counts=tok_cnt, length=n),
        decode_attention_ref(q, k, v, indices=tok, counts=tok_cnt, length=n), atol=1e-4, rtol=1e-4)
