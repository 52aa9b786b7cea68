"""SPLADE encoders on real models: fast pooling paths against the full-logits reference and ST."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsa.errors import ConfigError
from sparsa.kernels.splade_pool import splade_pool_ref
from sparsa.models import resolve_model
from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder
from sparsa.retrieval.splade_pooling import splade_pool_chunked, splade_pool_screened

TEXTS = [
    "cancer treatment with targeted therapy",
    "What is the effect of vitamin D on bone density in older adults?",
    "Protein folding",
    "Mitochondria are the powerhouse of the cell; they produce ATP through oxidative phosphorylation. " * 6,
    "A randomized controlled trial of aspirin for the primary prevention of cardiovascular events.",
]


@pytest.fixture(scope="module")
def docs(scifact) -> list[str]:
    return TEXTS + [doc.full_text for doc in scifact.corpus.documents[:6]]


@pytest.fixture(scope="module")
def splade_encoders() -> dict[str, SpladeEncoder]:
    methods = ("reference", "chunked", "screened")
    return {m: SpladeEncoder(SpladeConfig(pooling=m, device="cpu")) for m in methods}


def _pooling_inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(4, 23, 32, generator=gen) * 3
    weight = torch.randn(300, 32, generator=gen) / 4
    bias = torch.randn(300, generator=gen) - 3
    start = torch.tensor([0, 4, 0, 7], dtype=torch.int32)
    end = torch.tensor([23, 11, 1, 7], dtype=torch.int32)  # full, middle, single token, empty
    return hidden, weight, bias, start, end


@pytest.mark.parametrize("pool", [splade_pool_chunked, splade_pool_screened])
def test_torch_pooling_paths_match_reference(pool):
    hidden, weight, bias, start, end = _pooling_inputs()
    expected = splade_pool_ref(hidden, weight, bias, start, end)
    assert 0 < int((expected > 0).sum()) < expected.numel()  # some terms on, some off
    torch.testing.assert_close(pool(hidden, weight, bias, start, end), expected, atol=1e-5, rtol=1e-5)
    assert not expected[3].any()


@pytest.mark.parametrize("method", ["chunked", "screened"])
def test_fast_pooling_equals_reference_on_splade_tiny(method, splade_encoders, docs):
    expected = splade_encoders["reference"].encode_dense(docs)
    out = splade_encoders[method].encode_dense(docs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert ((out > 0).sum(dim=1) > 10).all()


def test_matches_sentence_transformers(splade_encoders, docs):
    st = pytest.importorskip("sentence_transformers")
    model = st.SparseEncoder(resolve_model("splade-tiny"), device="cpu")
    theirs = model.encode(docs, convert_to_tensor=True)
    theirs = (theirs.to_dense() if theirs.is_sparse else theirs).float()
    ours = splade_encoders["screened"].encode_documents(docs)
    for row, vec in zip(theirs, ours, strict=True):
        (nz,) = torch.nonzero(row, as_tuple=True)
        np.testing.assert_array_equal(vec.indices, nz.numpy())
        np.testing.assert_allclose(vec.values, row[nz].numpy(), atol=1e-5, rtol=1e-5)


def test_order_restored_and_batching_irrelevant(splade_encoders, docs):
    encoder = splade_encoders["screened"]
    forward = encoder.encode_documents(docs, batch_size=3)
    backward = encoder.encode_documents(docs[::-1])
    for a, b in zip(forward, backward[::-1], strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.values, b.values, atol=1e-5)
    assert forward[0].indices.dtype == np.int32 and forward[0].values.dtype == np.float32
    assert encoder.encode_queries([]) == []


def test_top_k_pruning_keeps_heaviest_terms(docs):
    full = SpladeEncoder(SpladeConfig(device="cpu")).encode_documents(docs[:3])
    pruned = SpladeEncoder(SpladeConfig(device="cpu", doc_top_k=8)).encode_documents(docs[:3])
    for a, b in zip(full, pruned, strict=True):
        assert b.nnz == 8
        np.testing.assert_allclose(np.sort(b.values), np.sort(a.values)[-8:], atol=1e-6)


def test_decode_lists_terms_heaviest_first(splade_encoders):
    encoder = splade_encoders["screened"]
    (vector,) = encoder.encode_queries(["cancer treatment"])
    terms = encoder.decode(vector, top_k=5)
    assert len(terms) == 5 and "cancer" in [t for t, _ in terms]
    weights = [w for _, w in terms]
    assert weights == sorted(weights, reverse=True) and math.isclose(weights[0], float(vector.values.max()))


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError):
        SpladeConfig(dtype="int8")
    with pytest.raises(ConfigError):
        SpladeConfig(doc_top_k=0)


def test_decoder_backbone_echo_pooling_matches_reference():
    texts = ["sparse retrieval with decoders", "The cell membrane controls transport."]
    config = SpladeConfig.mistral_splade(device="cpu", max_length=64)
    fast = SpladeEncoder(config)
    assert fast.architecture == "causal-lm" and fast.vocab_size == 49152
    ids, start, end = fast._model_input([5, 6, 7])
    assert ids[1:] == [5, 6, 7, 5, 6, 7] and (start, end) == (4, 7)
    expected = fast.encode_dense(texts)
    fast.pooling = "reference"
    torch.testing.assert_close(expected, fast.encode_dense(texts), atol=1e-4, rtol=1e-4)
    vectors = fast.encode_documents(texts)
    assert all(v.nnz > 0 for v in vectors)


def test_int8_cpu_screen_bounds_and_matches_reference():
    from sparsa.retrieval.splade_cpu_kernel import (
        fused_max_logits_available,
        int8_max_logits_upper,
        pack_weight_int8,
    )

    if not fused_max_logits_available():
        pytest.skip("no AVX2 or AVX512-VNNI CPU, or no compiler")
    hidden, weight, bias, start, end = _pooling_inputs()
    # widths not a multiple of 8 are padded; a large offset shared by all tokens (as real hidden states
    # have) is taken out by the per-document centring, so the bound stays tight
    shift = torch.randn(32, generator=torch.Generator().manual_seed(1)) * 9
    for dim, offset in ((32, 0.0), (30, 0.0), (32, 1.0), (20, 1.0)):
        h = (hidden[..., :dim] + offset * shift[:dim]).contiguous()
        w = weight[:, :dim].contiguous()
        packed = pack_weight_int8(w)
        upper = int8_max_logits_upper(h, start, end, packed)
        for b in range(h.shape[0]):
            if end[b] > start[b]:
                exact = (h[b, start[b]:end[b]] @ w.T).amax(0)
                assert (upper[b] >= exact).all()
                assert (upper[b] - exact).max() < 0.2 * exact.abs().max()  # a bound, but not a vacuous one
        screened = splade_pool_screened(h, w, bias, start, end, weight_packed=packed)
        torch.testing.assert_close(screened, splade_pool_ref(h, w, bias, start, end), atol=1e-5, rtol=1e-5)
