"""Head-type KV compression pieces without a model: echo/induction scoring and head-split attention."""

from __future__ import annotations

import pytest
import torch

from sparsa.kernels.kv_compression import (
    HeadProfile,
    HeadSplitKV,
    head_split_attention,
    repeated_sequence_scores,
)


def test_echo_and_induction_heads_score_highest():
    period, s = 8, 16
    att = torch.full((1, 4, s, s), 1.0 / s)  # uniform heads
    rows = torch.arange(period, s - 1)
    att[0, 1] = 0
    att[0, 1, rows, rows - period] = 1.0  # echo head (query head 1 -> kv head 0)
    att[0, 2] = 0
    att[0, 2, rows, rows - period + 1] = 1.0  # induction head (query head 2 -> kv head 1)
    scores = repeated_sequence_scores([att, torch.full((1, 4, s, s), 1.0 / s)], period, n_kv_heads=2)
    assert scores.shape == (2, 2)
    assert (scores[0].tolist() == pytest.approx([1.0, 1.0])
            and scores[1].tolist() == pytest.approx([2.0 / s] * 2))
    profile = HeadProfile.from_scores(scores, 0.5)
    assert profile.retrieval == [[True, True], [False, False]]
    with pytest.raises(ValueError):
        HeadProfile.from_scores(scores, 1.5)


def test_head_split_attention_matches_masked_reference():
    gen = torch.Generator().manual_seed(0)
    b, hkv, group, d, length, sq = 1, 3, 2, 16, 40, 3
    k = torch.randn(b, hkv, length, d, generator=gen)
    v = torch.randn(b, hkv, length, d, generator=gen)
    q = torch.randn(b, hkv * group, sq, d, generator=gen)
    full_heads, stream_heads = torch.tensor([1]), torch.tensor([0, 2])
    positions = torch.cat([torch.arange(4), torch.arange(length - 10, length)])  # sink 4 + window 10
    keys = HeadSplitKV(k[:, full_heads], k[:, stream_heads][:, :, positions], full_heads, stream_heads,
                       positions, length)
    values = HeadSplitKV(v[:, full_heads], v[:, stream_heads][:, :, positions], full_heads,
                         stream_heads, positions, length)
    out = head_split_attention(q, keys, values)
    # Reference: every head over the whole cache with a token mask (causal; streaming heads:
    # sink + window only).
    q_pos = torch.arange(length - sq, length)[:, None]
    k_pos = torch.arange(length)[None, :]
    kept = torch.zeros(length, dtype=torch.bool)
    kept[positions] = True
    for h in range(hkv * group):
        mask = k_pos <= q_pos
        if h // group in (0, 2):
            mask = mask & kept[None, :]
        scores = (q[0, h] @ k[0, h // group].T) / d ** 0.5
        ref = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v[0, h // group]
        torch.testing.assert_close(out[0, h], ref, atol=1e-5, rtol=1e-5)
