"""``generate_greedy`` decoding from a preallocated cache (``cuda_graph=True``) against the growing cache.

On the CPU the static steps run eagerly (no graph): they must pick the same tokens with the same
log-probabilities and count the same attention statistics as the eager loop, with the sparse selection
engaged (budgets below the prompt length) and with kv="duo"'s head-compressed cache (streaming heads' windows
far below the prompt length). The ``gpu`` tests capture and replay the CUDA graph. Two slow tests run
SmolLM2 from the registry.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from sparsa.kernels.hf_attention import remove_sparse_attention, use_sparse_attention
from sparsa.kernels.kv_compression import profile_retrieval_heads
from sparsa.rag import generate
from sparsa.rag.generate import GenerationStats, generate_greedy, release_decode_graph

PROMPT = torch.randint(0, 2000, (160,), generator=torch.Generator().manual_seed(1)).tolist()
# A longer second prompt: the decoder (and on CUDA its graph) captured for the first is reused.
PROMPTS = [PROMPT, torch.randint(0, 2000, (190,), generator=torch.Generator().manual_seed(2)).tolist()]
SETTINGS = {
    "full": {"prefill": "dense"},
    "quest": {"prefill": "dense", "decode": "sparse", "selector": "quest", "budget_tokens": 64,
              "page_size": 16, "dense_layers": 1},
    "tidal": {"prefill": "dense", "decode": "sparse", "selector": "tidal", "budget_tokens": 48,
              "tidal_layers": (1,)},
}
# kv="duo" (half the KV heads keep sink + window, a ring the decode wraps), alone and under Quest (the
# reader's "sparse-kv"); _install profiles the model's retrieval heads for them.
DUO = {"kv": "duo", "retrieval_fraction": 0.5, "sink": 4, "window": 8}
SETTINGS |= {"duo": {"prefill": "dense", **DUO}, "sparse-kv": {**SETTINGS["quest"], **DUO}}


def _install(model, name):
    settings = SETTINGS[name]
    if settings.get("kv") == "duo":
        profile = profile_retrieval_heads(model, period=64, n_sequences=1, model_name="tiny-llama")
        settings = {**settings, "profile": profile}
    use_sparse_attention(model, **settings)


def _tiny_llama(dtype=torch.float32, device="cpu"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=2000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    return LlamaForCausalLM(config).eval().to(device=device, dtype=dtype)


@pytest.fixture(scope="module")
def model():
    return _tiny_llama()


def _generate(model, cuda_graph, prompt=PROMPT, n=12):
    stats = GenerationStats()
    before = dict(getattr(model, "sparse_attention_stats", {}))
    tokens = list(generate_greedy(model, prompt, n, stop_ids=[], stats=stats, cuda_graph=cuda_graph))
    after = getattr(model, "sparse_attention_stats", {})
    return tokens, stats, {key: after[key] - before.get(key, 0) for key in after}


def _same_generation(model, prompts=(PROMPT,)):
    """The static path's tokens, log-probabilities and statistics equal the eager loop's. (Their float32
    logits differ in the last bits, attention sums running over the buffer rather than the cache, so a
    prompt whose Quest bounds nearly tie could select another page; these seeded prompts do not.)"""
    for prompt in prompts:
        eager, eager_stats, eager_counts = _generate(model, False, prompt)
        static, static_stats, static_counts = _generate(model, True, prompt)
        assert static == eager and len(static) == 12
        torch.testing.assert_close(static_stats.logprobs, eager_stats.logprobs, atol=1e-4, rtol=1e-4)
        assert eager_stats.decode_mode == "eager" and static_stats.decode_mode in ("static", "graph")
        assert static_counts == eager_counts
    return eager_counts


@pytest.mark.parametrize("name", SETTINGS)
def test_static_decode_picks_the_eager_tokens_and_counts_the_same(model, name):
    _install(model, name)
    try:
        counts = _same_generation(model, PROMPTS)
    finally:
        remove_sparse_attention(model)
    if name in ("full", "duo"):
        assert counts["decode_keys_read"] == counts["decode_keys_total"] > 0
    else:  # the selection engaged: fewer keys read than the cache holds
        assert 0 < counts["decode_keys_read"] < counts["decode_keys_total"]
    if name in ("quest", "sparse-kv"):
        assert counts["decode_selection_reads"] > 0


@pytest.mark.parametrize("name", [None, *SETTINGS])
def test_only_sparse_decode_gives_a_generations_first_step_its_own_graph(model, name):
    """The first step rebuilds the page bounds (and on CUDA replays a graph of its own) exactly where the
    decode is sparse; full decode and plain SDPA run every step through one graph."""
    if name is not None:
        _install(model, name)
    try:
        _generate(model, True, n=2)
        decoder = model._sparsa_static_decoder
        assert decoder.rebuilds == (name is not None and SETTINGS[name].get("decode") == "sparse")
    finally:
        remove_sparse_attention(model)
        release_decode_graph(model)


def test_static_decode_with_exempt_retrieval_heads(model):
    profile = profile_retrieval_heads(model, period=64, n_sequences=1, model_name="tiny-llama")
    use_sparse_attention(model, **SETTINGS["quest"], full_retrieval_heads=True, retrieval_fraction=0.5,
                         profile=profile.with_fraction(0.5))
    try:
        counts = _same_generation(model)
    finally:
        remove_sparse_attention(model)
    assert 0 < counts["decode_keys_read"] < counts["decode_keys_total"]


def test_our_attention_keeps_one_decoder_for_much_shorter_prompts(model):
    """Our attention reads only the keys up to the length, so a prompt 1,200 tokens shorter than the last one
    decodes from the same preallocated cache (no new cache, no new graph on CUDA) and generates what the
    eager loop does; a masked backend (plain SDPA) gets a cache sized to it instead."""
    long_prompt = torch.randint(0, 2000, (1400,), generator=torch.Generator().manual_seed(3)).tolist()
    use_sparse_attention(model, **SETTINGS["quest"])
    try:
        _generate(model, True, long_prompt, n=2)
        decoder = model._sparsa_static_decoder
        static = _generate(model, True, PROMPT)
        assert model._sparsa_static_decoder is decoder and decoder.capacity >= 1400
        eager = _generate(model, False, PROMPT)
    finally:
        remove_sparse_attention(model)
    assert static[0] == eager[0] and static[2] == eager[2]
    torch.testing.assert_close(static[1].logprobs, eager[1].logprobs, atol=1e-4, rtol=1e-4)
    _generate(model, True, long_prompt, n=2)
    _generate(model, True, PROMPT)
    assert model._sparsa_static_decoder.capacity < 1400
    release_decode_graph(model)


def test_plain_sdpa_model_takes_the_static_cache_and_auto_stays_eager_off_cuda(model):
    eager, _, _ = _generate(model, False)
    static, static_stats, _ = _generate(model, True)
    assert static == eager and static_stats.decode_mode == "static"
    _, auto_stats, _ = _generate(model, None)
    assert auto_stats.decode_mode == "eager"
    release_decode_graph(model)
    assert model._sparsa_static_decoder is None


@pytest.mark.parametrize(("sink", "window"), [(4, 8), (16, 150)],
                         ids=["prefill-trimmed", "fills-while-decoding"])
def test_duo_decodes_from_a_static_head_compressed_cache(model, sink, window):
    """The preallocated cache takes the prefilled compressed one as it is, whether prefill trimmed the
    streaming heads (160 tokens > 4 + 8) or decoding passes sink + window (16 + 150) and starts the ring: the
    static steps follow the eager loop either way. The windows matter: keeping every key generates apart."""
    profile = profile_retrieval_heads(model, period=64, n_sequences=1, model_name="tiny-llama")
    use_sparse_attention(model, **{**SETTINGS["duo"], "sink": sink, "window": window, "profile": profile})
    try:
        _same_generation(model, PROMPTS)
        cache = model._sparsa_static_decoder.cache
        assert type(cache.layers[0]).__name__ == "_StaticHeadCompressedLayer"
        assert cache.layers[0].rec_keys.shape[2] == sink + window
        logprobs = _generate(model, True)[1].logprobs
    finally:
        remove_sparse_attention(model)
        release_decode_graph(model)
    use_sparse_attention(model, **{**SETTINGS["duo"], "sink": 160, "window": 16, "profile": profile})
    try:
        assert _generate(model, True)[1].logprobs != logprobs  # every key kept: another generation
    finally:
        remove_sparse_attention(model)
        release_decode_graph(model)


def test_a_generation_abandoned_midway_unbinds_the_static_decode(model):
    use_sparse_attention(model, **SETTINGS["quest"])
    try:
        stream = generate_greedy(model, PROMPT, 12, stop_ids=[], cuda_graph=True)
        next(stream), next(stream)
        assert "static" not in model._sparsa_shared  # bound only while a step runs
        stream.close()
        tokens, _, _ = _generate(model, False)
        assert len(tokens) == 12
    finally:
        remove_sparse_attention(model)


@pytest.mark.slow
def test_smollm2_static_decode_matches_eager_with_quest_engaged(smollm2_pass_key):
    tok, lm, text = smollm2_pass_key
    ids = tok(text).input_ids
    use_sparse_attention(lm, prefill="dense", decode="sparse", budget_tokens=128, page_size=16)
    try:
        eager, eager_stats, eager_counts = _generate(lm, False, ids, n=10)
        static, static_stats, static_counts = _generate(lm, True, ids, n=10)
    finally:
        remove_sparse_attention(lm)
    assert static == eager and "48213" in tok.decode(static)
    torch.testing.assert_close(static_stats.logprobs, eager_stats.logprobs, atol=1e-4, rtol=1e-4)
    assert static_counts == eager_counts
    assert 0 < static_counts["decode_keys_read"] < static_counts["decode_keys_total"] / 3


@pytest.mark.slow
def test_smollm2_sparse_kv_static_decode_matches_eager(smollm2_pass_key):
    """The reader's "sparse-kv" on a real model: block-sparse prefill, Quest over the retrieval heads, the
    streaming heads' windows (64 + 128) far below the ~600-token prompt; static and eager pick alike."""
    tok, lm, text = smollm2_pass_key
    ids = tok(text).input_ids
    profile = profile_retrieval_heads(lm, period=64, n_sequences=1, model_name="smollm2-135m-instruct")
    use_sparse_attention(lm, prefill="block-sparse", decode="sparse", kv="duo", budget_tokens=128,
                         page_size=16, sink=64, window=128, profile=profile)
    try:
        eager, eager_stats, eager_counts = _generate(lm, False, ids, n=10)
        static, static_stats, static_counts = _generate(lm, True, ids, n=10)
    finally:
        remove_sparse_attention(lm)
        release_decode_graph(lm)
    assert static == eager and len(static) == 10 and static_stats.decode_mode == "static"
    torch.testing.assert_close(static_stats.logprobs, eager_stats.logprobs, atol=1e-4, rtol=1e-4)
    assert static_counts == eager_counts
    assert 0 < static_counts["decode_keys_read"] < static_counts["decode_keys_total"]


@pytest.mark.gpu
@pytest.mark.parametrize("name", SETTINGS)
def test_cuda_graph_replays_the_static_steps(monkeypatch, name):
    """On CUDA (bf16: the Triton kernels; float32: the PyTorch references) the replayed graph picks what the
    same static steps pick when run eagerly, for two prompts (the second replays the graph captured for the
    first), and counts the same statistics; with full decode (and duo in float32) it also picks the growing
    cache's tokens."""
    for dtype in (torch.bfloat16, torch.float32):
        lm = _tiny_llama(dtype, "cuda")
        _install(lm, name)
        graphed = [_generate(lm, None, p) for p in PROMPTS]
        assert graphed[0][1].decode_mode == "graph" and graphed[0][1].capture_seconds > 0
        assert graphed[1][1].capture_seconds == 0  # the second generation replays the same graph
        with monkeypatch.context() as patch:
            patch.setattr(generate, "_capture_on", lambda device: False)
            stepped = [_generate(lm, True, p) for p in PROMPTS]
        for (tokens, stats, counts), (ref, ref_stats, ref_counts) in zip(graphed, stepped, strict=True):
            assert ref_stats.decode_mode == "static"
            assert tokens == ref and counts == ref_counts, dtype
            torch.testing.assert_close(stats.logprobs, ref_stats.logprobs, atol=1e-2, rtol=1e-2)
        # duo's ring keeps the streaming keys in another order than the growing cache: float32 only
        if name == "full" or (name == "duo" and dtype == torch.float32):
            for prompt, (tokens, _, counts) in zip(PROMPTS, graphed, strict=True):
                eager = _generate(lm, False, prompt)
                assert tokens == eager[0] and counts == eager[2], dtype

def test_eager_quest_rebuilds_its_page_bounds_for_each_new_prompt(model):
    """A longer prompt after a shorter one: the growing-cache loop must not keep the old prompt's page bounds
    (it once updated only the pages past the old length)."""
    use_sparse_attention(model, **SETTINGS["quest"])
    try:
        _generate(model, False, PROMPT)
        after_short = _generate(model, False, PROMPTS[1])[1].logprobs
    finally:
        remove_sparse_attention(model)
    use_sparse_attention(model, **SETTINGS["quest"])
    try:
        fresh = _generate(model, False, PROMPTS[1])[1].logprobs
    finally:
        remove_sparse_attention(model)
    assert after_short == fresh
