"""Block gating (training-free) and the block-max ground-truth kernel, on CPU under
TRITON_INTERPRET=1; bf16 runs on the GPU in bench/bench_attention.py."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module creates its jit functions

import pytest
import torch

pytest.importorskip("triton")

from sparsa.kernels.block_gating import (
    attention_block_max,
    attention_block_max_ref,
    block_gate_scores,
    block_visibility,
    pool_blocks,
    select_blocks,
    training_free_gate,
)
from sparsa.kernels.block_sparse_attention import (
    block_sparse_attention,
    block_sparse_attention_ref,
)

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU interpreter tests")

TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.float16: (2e-3, 2e-3)}

# (B, Hq, Hkv, Sq, Sk, D, block): exact tiles, ragged + GQA, 128-dim MQA, Sq < Sk, Sq > Sk.
SHAPES = [
    (1, 2, 2, 32, 32, 64, 16),
    (2, 4, 2, 37, 37, 64, 16),
    (1, 2, 1, 45, 45, 128, 32),
    (1, 2, 1, 20, 50, 64, 16),
    (1, 2, 1, 50, 20, 64, 16),
]


def _qk(shape, dtype, seed=0):
    b, hq, hkv, sq, sk, d, _ = shape
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, sq, d, generator=gen).to(dtype),
            torch.randn(b, hkv, sk, d, generator=gen).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_block_max_matches_reference(shape, causal, dtype):
    q, k = _qk(shape, dtype)
    block = shape[-1]
    out = attention_block_max(q, k, block_size=block, causal=causal)
    ref = attention_block_max_ref(q, k, block_size=block, causal=causal)
    atol, rtol = TOLERANCE[dtype]
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    visible, _ = block_visibility(shape[3], shape[4], block, causal)
    assert torch.all(out[..., ~visible] == 0)


def test_pool_blocks_ragged_last_block():
    x = torch.randn(1, 1, 21, 8)
    mean = pool_blocks(x, 16, "mean")
    torch.testing.assert_close(mean[0, 0, 1], x[0, 0, 16:].mean(0))
    torch.testing.assert_close(pool_blocks(x, 16, "max")[0, 0, 1], x[0, 0, 16:].amax(0))
    torch.testing.assert_close(pool_blocks(x, 16, "min")[0, 0, 0], x[0, 0, :16].amin(0))
    with pytest.raises(ValueError, match="pool mode"):
        pool_blocks(x, 16, "median")


@pytest.mark.parametrize(("sq", "sk"), [(64, 64), (40, 70), (70, 40)], ids=["square", "fewer-q", "more-q"])
def test_visibility_and_forced_blocks(sq, sk):
    visible, forced = block_visibility(sq, sk, 16, causal=True)
    rows = torch.arange(sq)[:, None] + (sk - sq)
    token_visible = rows >= torch.arange(sk)[None, :]
    pad = (0, visible.shape[1] * 16 - sk, 0, visible.shape[0] * 16 - sq)
    expected = torch.nn.functional.pad(token_visible, pad).view(visible.shape[0], 16, -1, 16).any(3).any(1)
    assert torch.equal(visible, expected)
    sees_something = visible.any(1)
    assert torch.all(forced[sees_something, 0])  # the sink
    assert torch.equal(forced.sum(1)[sees_something].clamp(max=1), torch.ones(int(sees_something.sum()),
                                                                                 dtype=torch.long))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gate_scores_are_distributions_over_visible_blocks(causal):
    q, k = _qk((2, 4, 2, 70, 70, 64, 16), torch.float32)
    scores = block_gate_scores(q, k, block_size=16, causal=causal)
    visible, _ = block_visibility(70, 70, 16, causal)
    torch.testing.assert_close(scores.sum(-1), torch.ones(scores.shape[:-1]))
    assert torch.all(scores[..., ~visible] == 0)


@pytest.mark.parametrize("topk", [0, 1, 3, 100])
def test_topk_selection(topk):
    q, k = _qk((1, 2, 1, 100, 100, 64, 16), torch.float32)
    scores = block_gate_scores(q, k, block_size=16, causal=True)
    mask = select_blocks(scores, seqlen_q=100, seqlen_k=100, block_size=16, causal=True, topk=topk)
    visible, forced = block_visibility(100, 100, 16, causal=True)
    assert not torch.any(mask & ~visible) and torch.all(mask[..., forced])
    counts = mask.sum(-1)
    assert torch.all(counts <= (visible.sum(-1).clamp(max=topk) + forced.sum(-1)))
    assert torch.all(counts >= visible.sum(-1).clamp(max=max(topk, 1)))
    if topk:
        best = scores.masked_fill(~visible, -1.0).argmax(-1, keepdim=True)
        assert torch.all(mask.gather(-1, best))


def test_threshold_selection_and_argument_check():
    q, k = _qk((1, 2, 1, 64, 64, 64, 16), torch.float32)
    scores = block_gate_scores(q, k, block_size=16, causal=True)
    common = {"seqlen_q": 64, "seqlen_k": 64, "block_size": 16, "causal": True}
    visible, forced = block_visibility(64, 64, 16, causal=True)
    assert torch.equal(select_blocks(scores, threshold=0.0, **common), visible.expand_as(scores))
    assert torch.equal(select_blocks(scores, threshold=1.5, **common), forced.expand_as(scores))
    with pytest.raises(ValueError, match="exactly one"):
        select_blocks(scores, topk=2, threshold=0.1, **common)


@pytest.mark.parametrize(("sq", "sk"), [(70, 70), (20, 70)])
def test_token_gate_is_the_pooled_query_attention_mass(sq, sk):
    """keys="tokens": the probability of block j is the attention mass the pooled query puts on its keys."""
    q, k = _qk((2, 4, 2, sq, sk, 64, 16), torch.float32, seed=3)
    scores = block_gate_scores(q, k, block_size=16, causal=True, keys="tokens")
    qp = pool_blocks(q, 16, "mean")
    logits = torch.einsum("bhnd,bhsd->bhns", qp, k.repeat_interleave(2, 1)) / 8.0
    newest = torch.clamp((torch.arange(qp.shape[2]) + 1) * 16 - 1, max=sq - 1) + sk - sq
    logits = logits.masked_fill(torch.arange(sk)[None, :] > newest[:, None], float("-inf"))
    probs = torch.softmax(logits, -1).nan_to_num(0.0)
    want = torch.nn.functional.pad(probs, (0, 80 - sk)).view(*probs.shape[:3], 5, 16).sum(-1)
    torch.testing.assert_close(scores, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="keys"):
        block_gate_scores(q, k, block_size=16, keys="nearest")


def test_coverage_selection_keeps_the_fewest_blocks_reaching_the_mass():
    q, k = _qk((1, 2, 1, 128, 128, 64, 16), torch.float32, seed=5)
    scores = block_gate_scores(q, k, block_size=16, causal=True, keys="tokens")
    common = {"seqlen_q": 128, "seqlen_k": 128, "block_size": 16, "causal": True}
    visible, forced = block_visibility(128, 128, 16, causal=True)
    masks = {c: select_blocks(scores, coverage=c, **common) for c in (0.3, 0.6, 0.9)}
    for coverage, mask in masks.items():
        assert torch.all((scores * mask).sum(-1) >= coverage - 1e-6)
        assert not torch.any(mask & ~visible) and torch.all(mask[..., forced])
        # without the forced blocks, every kept block outscores every dropped visible one
        optional = mask & ~forced
        weakest_kept = scores.masked_fill(~optional, float("inf")).amin(-1)
        best_dropped = scores.masked_fill(mask | ~visible, float("-inf")).amax(-1)
        assert torch.all(weakest_kept >= best_dropped)
    assert torch.all(masks[0.3] <= masks[0.6]) and torch.all(masks[0.6] <= masks[0.9])
    assert torch.equal(select_blocks(scores, coverage=1.0, **common), visible.expand_as(scores))
    with pytest.raises(ValueError, match="coverage"):
        select_blocks(scores, coverage=1.5, **common)


def test_gate_drives_sparse_attention():
    shape = (1, 4, 2, 80, 80, 64, 16)
    q, k = _qk(shape, torch.float16, seed=4)
    v = torch.randn_like(k)
    kept = training_free_gate(q, k, block_size=16, causal=True, topk=2)
    out = block_sparse_attention(q, k, v, kept, block_size=16, causal=True)
    ref = block_sparse_attention_ref(q, k, v, kept, block_size=16, causal=True)
    torch.testing.assert_close(out.float(), ref.float(), atol=4e-3, rtol=4e-3)
