"""Sparse attention installed on a real (small, randomly initialised) transformers Llama, on the CPU path.

Exact settings (all blocks kept, budget >= cache, every head a retrieval head) must reproduce the model's
own SDPA logits; lossy settings must run through prefill + decode, shrink the cache by the expected bytes,
and record what they computed. One slow test runs SmolLM2 from the registry.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from sparsa.errors import ConfigError, DataFormatError
from sparsa.kernels.hf_attention import (
    install_sparse_attention,
    remove_sparse_attention,
    use_sparse_attention,
)
from sparsa.kernels.kv_compression import (
    HeadProfile,
    compressed_cache,
    kv_cache_bytes,
    profile_retrieval_heads,
)
from sparsa.transformers_compat import cache_argument


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=2000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    return LlamaForCausalLM(config).eval()


LOSSY = [
    {"prefill": "block-sparse", "min_sparse_tokens": 16, "gate_topk": 1, "block_size": 16},
    {"decode": "sparse", "selector": "quest", "budget_tokens": 64, "page_size": 16, "dense_layers": 1},
    {"decode": "sparse", "selector": "tidal", "budget_tokens": 64, "tidal_layers": (1,)},
]
IDS = torch.randint(0, 2000, (1, 160), generator=torch.Generator().manual_seed(1))


def _run(model, steps=4):
    """Prefill + greedy decode; returns (stacked last-position logits, cache)."""
    with torch.inference_mode():
        out = model(IDS, use_cache=True)
        cache, logits = out.past_key_values, [out.logits[:, -1]]
        for _ in range(steps):
            token = logits[-1].argmax(-1, keepdim=True)
            out = model(token, use_cache=True, **{cache_argument(model): cache})
            cache = out.past_key_values
            logits.append(out.logits[:, -1])
    return torch.stack(logits), cache


@pytest.fixture(scope="module")
def reference(model):
    remove_sparse_attention(model)
    return _run(model)


@pytest.fixture(scope="module")
def profile(model):
    return profile_retrieval_heads(model, period=64, n_sequences=1, model_name="tiny-llama")


@pytest.mark.parametrize("settings", [
    {"prefill": "dense"},
    {"prefill": "block-sparse", "min_sparse_tokens": 16, "gate_topk": 100},
    {"decode": "sparse", "selector": "quest", "budget_tokens": 4096},
    {"decode": "sparse", "selector": "tidal", "budget_tokens": 4096},
    {"kv": "duo", "retrieval_fraction": 1.0},
    *({**lossy, "full_retrieval_heads": True, "retrieval_fraction": 1.0} for lossy in LOSSY),
], ids=["dense", "block-sparse-all-blocks", "quest-big-budget", "tidal-big-budget", "duo-all-retrieval",
        "block-sparse-all-heads-exempt", "quest-all-heads-exempt", "tidal-all-heads-exempt"])
def test_exact_settings_reproduce_model_attention(model, reference, profile, settings):
    if settings.get("kv") == "duo" or settings.get("full_retrieval_heads"):
        settings = {**settings, "profile": profile}
    use_sparse_attention(model, **settings)
    try:
        logits, _ = _run(model)
    finally:
        remove_sparse_attention(model)
    torch.testing.assert_close(logits, reference[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("settings", LOSSY, ids=["block-sparse", "quest", "tidal"])
def test_lossy_settings_compute_less(model, settings):
    stats = _stats(model, settings)
    if settings.get("prefill") == "block-sparse":
        assert 0 < stats["prefill_blocks_kept"] < stats["prefill_blocks_visible"]
    else:
        assert 0 < stats["decode_keys_read"] < stats["decode_keys_total"]


def test_quest_counts_the_page_bounds_it_reads(model):
    """Quest reads a min and a max key per page to select: coarser pages read fewer; Tidal counts none."""
    quest = next(s for s in LOSSY if s.get("selector") == "quest")
    fine, coarse = (_stats(model, {**quest, "page_size": page}) for page in (4, 16))
    assert 0 < coarse["decode_selection_reads"] < fine["decode_selection_reads"]
    assert fine["decode_selection_reads"] > 3 * coarse["decode_selection_reads"]  # ~4x, partial last pages
    tidal = next(s for s in LOSSY if s.get("selector") == "tidal")
    assert _stats(model, tidal)["decode_selection_reads"] == 0


@pytest.mark.parametrize("settings", LOSSY, ids=["block-sparse", "quest", "tidal"])
def test_exempt_retrieval_heads_read_everything(model, profile, settings):
    """Half the KV heads exempt: those read every block / key, so the work lies between
    the rule's and full."""
    half = profile.with_fraction(0.5)
    lossy = _stats(model, settings)
    mixed = _stats(model, {**settings, "full_retrieval_heads": True, "retrieval_fraction": 0.5,
                           "profile": half})
    kept, total = (("prefill_blocks_kept", "prefill_blocks_visible")
                   if settings.get("prefill") == "block-sparse"
                   else ("decode_keys_read", "decode_keys_total"))
    exempt_share = sum(map(sum, half.retrieval)) / sum(map(len, half.retrieval))
    assert lossy[kept] < mixed[kept] < mixed[total] == lossy[total]
    assert mixed[kept] >= exempt_share * mixed[total]


def test_exempt_heads_with_duo_cache_read_everything(model, profile):
    """kv="duo" gives decode only the retrieval heads; exempt, they read their whole cache
    as duo alone does."""
    half = profile.with_fraction(0.5)
    duo = {"kv": "duo", "profile": half, "retrieval_fraction": 0.5, "sink": 16, "window": 32}
    reference, _ = _logits(model, duo)
    mixed, _ = _logits(model, {**duo, "decode": "sparse", "selector": "quest", "budget_tokens": 64,
                               "page_size": 16, "dense_layers": 0, "full_retrieval_heads": True})
    torch.testing.assert_close(mixed, reference, atol=1e-4, rtol=1e-4)


def _logits(model, settings):
    use_sparse_attention(model, **settings)
    try:
        return _run(model)
    finally:
        remove_sparse_attention(model)


def _stats(model, settings) -> dict:
    use_sparse_attention(model, **settings)
    try:
        logits, _ = _run(model)
        stats = dict(model.sparse_attention_stats)
    finally:
        remove_sparse_attention(model)
    assert torch.isfinite(logits).all()
    return stats


def test_duo_cache_keeps_sink_and_window_for_streaming_heads(model, reference, profile):
    half = profile.with_fraction(0.5)
    use_sparse_attention(model, kv="duo", profile=half, retrieval_fraction=0.5, sink=16, window=32)
    try:
        logits, cache = _run(model, steps=4)
    finally:
        remove_sparse_attention(model)
    assert torch.isfinite(logits).all()
    length = IDS.shape[1] + 4
    n_layers, n_kv, head_dim = 4, 2, 64
    per_token = 2 * head_dim * 4  # K and V, float32
    expected = sum(per_token * (length if keep else 16 + 32) for layer in half.retrieval for keep in layer)
    assert (kv_cache_bytes(cache) == expected < kv_cache_bytes(reference[1])
            == per_token * length * n_layers * n_kv)
    assert cache.get_seq_length() == length


def test_duo_through_generate_uses_the_compressed_cache(model, profile):
    use_sparse_attention(model, kv="duo", profile=profile, retrieval_fraction=0.5, sink=4, window=8)
    try:
        with torch.inference_mode():
            out = model.generate(IDS[:, :50], max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    finally:
        remove_sparse_attention(model)
    cache = out.past_key_values
    assert out.sequences.shape[1] == 53
    assert any(type(layer).__name__ == "_HeadCompressedLayer" for layer in cache.layers)


def test_profile_roundtrip_and_errors(tmp_path, model, profile):
    assert len(profile.scores) == 4 and all(len(row) == 2 for row in profile.scores)
    assert profile.retrieval_fraction == 0.25
    path = profile.save(tmp_path / "p.json")
    assert HeadProfile.load(path) == profile
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataFormatError):
        HeadProfile.load(tmp_path / "bad.json")
    wrong = HeadProfile.from_scores(torch.rand(3, 2), 0.5)
    with pytest.raises(ConfigError, match="does not fit"):
        use_sparse_attention(model, kv="duo", profile=wrong, retrieval_fraction=0.5)
    with pytest.raises(ConfigError, match="unknown sparse attention setting"):
        use_sparse_attention(model, budget=3)
    with pytest.raises(ConfigError, match="prefill"):
        use_sparse_attention(model, prefill="sparse")
    with pytest.raises(ConfigError, match="fewer than 3 pages of 64"):
        use_sparse_attention(model, decode="sparse", budget_tokens=128)
    with pytest.raises(ValueError):
        compressed_cache(profile, window=0)
    assert model.config._attn_implementation != "sparsa"


def test_padded_batch_falls_back_to_exact_attention(model):
    ids = torch.randint(0, 2000, (2, 40), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding
    with torch.inference_mode():
        remove_sparse_attention(model)
        ref = model(ids, attention_mask=mask).logits
        install_sparse_attention(model)
        try:
            out = model(ids, attention_mask=mask).logits
        finally:
            remove_sparse_attention(model)
    torch.testing.assert_close(out[:, -1], ref[:, -1], atol=1e-4, rtol=1e-4)


def test_cpu_block_sparse_prefill_matches_reference(monkeypatch):
    from sparsa.kernels import attention_ops
    from sparsa.kernels.block_sparse_attention import block_sparse_attention_ref

    monkeypatch.setattr(attention_ops, "_CPU_CHUNK_ROWS", 48)  # several query chunks
    gen = torch.Generator().manual_seed(0)
    for sq, sk in [(200, 200), (100, 230)]:
        q, k, v = (torch.randn(1, h, s, 64, generator=gen) for h, s in ((6, sq), (2, sk), (2, sk)))
        mask = attention_ops.gate_mask(q, k, block_size=32, topk=2, threshold=None, scale=0.125)
        assert 0 < mask.float().mean() < 1
        out = attention_ops.block_sparse_prefill(q, k, v, mask, block_size=32, scale=0.125)
        ref = block_sparse_attention_ref(q, k, v, mask, block_size=32, causal=True, sm_scale=0.125)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_kept_share_counts_visible_blocks():
    """The dispatch rule's input: kept blocks over causally visible ones (both alignments)."""
    from sparsa.kernels import attention_ops
    from sparsa.kernels.block_gating import block_visibility

    for sq, sk in [(256, 256), (100, 230)]:
        visible, forced = block_visibility(sq, sk, 32, True)
        everything = visible.expand(2, 3, *visible.shape)
        assert attention_ops.kept_share(everything, sq, sk, 32) == 1.0
        share = attention_ops.kept_share(forced.expand(2, 3, *forced.shape), sq, sk, 32)
        assert share == forced.sum().item() / visible.sum().item() < attention_ops.SPARSE_MAX_KEPT


@pytest.mark.slow
def test_smollm2_answers_the_same_with_sparse_settings(smollm2_pass_key):
    tok, lm, text = smollm2_pass_key
    ids = tok(text, return_tensors="pt").input_ids

    def answer():
        with torch.inference_mode():
            return tok.decode(lm.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:])

    full = answer()
    assert "48213" in full
    profile = profile_retrieval_heads(lm, period=64, n_sequences=1, retrieval_fraction=0.5)
    for settings in ({"prefill": "dense", "decode": "sparse", "budget_tokens": 128, "page_size": 16},
                     {"prefill": "dense", "kv": "duo", "retrieval_fraction": 0.5, "sink": 16, "window": 64,
                      "profile": profile}):
        use_sparse_attention(lm, **settings)
        try:
            assert "48213" in answer(), settings
        finally:
            remove_sparse_attention(lm)
    # The training-free block gate runs on the real model at ~45% density; on SmolLM2 it loses this needle
    # (as it does at 4k/8k in bench/results/longcontext_accuracy.json), so only the mechanics are checked.
    use_sparse_attention(lm, prefill="block-sparse", min_sparse_tokens=128, gate_topk=4)
    try:
        assert answer().strip()
        stats = lm.sparse_attention_stats
        assert 0 < stats["prefill_blocks_kept"] < stats["prefill_blocks_visible"]
    finally:
        remove_sparse_attention(lm)
