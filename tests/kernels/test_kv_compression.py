"""Head-type KV compression pieces without a model: echo/induction scoring, head-split attention, and the
preallocated (static) head-compressed cache against the growing one."""

from __future__ import annotations

import pytest
import torch

from sparsa.kernels.kv_compression import (
    HeadProfile,
    HeadSplitKV,
    compressed_cache,
    head_split_attention,
    repeated_sequence_scores,
    static_compressed_cache,
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


@pytest.mark.parametrize(("prompt", "sink", "window"), [(40, 4, 8), (10, 4, 8), (40, 0, 8), (5, 16, 32)],
                         ids=["prefill-trimmed", "fills-while-decoding", "no-sink", "never-full"])
def test_static_cache_attends_to_what_the_growing_cache_keeps(prompt, sink, window):
    """The hand-over from a prefilled growing cache, then 30 one-token steps into both: the static cache's
    streaming slots hold the same positions (sink + the newest window, the ring wrapping several times) and
    head-split attention over its buffers (the length a device tensor) equals that over the growing one."""
    gen = torch.Generator().manual_seed(1)
    b, hkv, group, d, capacity = 1, 3, 2, 16, 96
    profile = HeadProfile.from_scores(torch.tensor([[0.1, 0.9, 0.2]]), 1 / 3)
    growing, static = (compressed_cache(profile, sink=sink, window=window),
                       static_compressed_cache(profile, capacity, sink=sink, window=window))

    def kv(n):
        return torch.randn(b, hkv, n, d, generator=gen), torch.randn(b, hkv, n, d, generator=gen)

    growing.update(*kv(prompt), 0)
    static.layers[0].load_prompt(growing.layers[0])
    for step in range(30):
        k, v = kv(1)
        keys, values = growing.update(k, v, 0)
        s_keys, s_values = static.update(k, v, 0)
        assert isinstance(s_keys.length, torch.Tensor)
        assert int(s_keys.length) == keys.length == prompt + step + 1
        assert s_keys.full.shape == (b, 1, capacity, d) and s_keys.recent.shape == (b, 2, sink + window, d)
        held = sorted(p for p in s_keys.positions.tolist() if p < capacity)
        assert held == keys.positions.tolist()
        q = torch.randn(b, hkv * group, 1, d, generator=gen)
        torch.testing.assert_close(head_split_attention(q, s_keys, s_values),
                                   head_split_attention(q, keys, values), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one token"):
        static.update(*kv(2), 0)
