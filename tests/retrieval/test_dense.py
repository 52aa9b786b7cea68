"""DenseEncoder against sentence-transformers on the real all-MiniLM-L6-v2 weights."""

from __future__ import annotations

import numpy as np
import pytest

from sparsa.errors import ConfigError
from sparsa.models import resolve_model
from sparsa.retrieval.dense import DenseConfig, DenseEncoder

TEXTS = [
    "cancer treatment with targeted therapy",
    "What is the effect of vitamin D on bone density in older adults?",
    "Protein folding",
    "Mitochondria produce ATP through oxidative phosphorylation. " * 40,  # longer than max_seq_length
]


@pytest.fixture(scope="module")
def texts(scifact) -> list[str]:
    return TEXTS + [doc.full_text for doc in scifact.corpus.documents[:8]]


@pytest.fixture(scope="module")
def reference(texts) -> np.ndarray:
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(resolve_model("minilm-l6"), device="cpu").encode(texts, batch_size=4)


@pytest.mark.parametrize("dtype, atol", [("float32", 1e-5), ("bfloat16", 1e-2)])
def test_matches_sentence_transformers(dtype, atol, texts, reference):
    encoder = DenseEncoder(DenseConfig(device="cpu", dtype=dtype))
    assert (encoder.max_length, encoder.pooling, encoder.normalize) == (256, "mean", True)
    out = encoder.encode_documents(texts)
    assert out.dtype == np.float32 and out.shape == (len(texts), 384)
    np.testing.assert_allclose(out, reference, atol=atol)
    assert (np.sum(out * reference, axis=1) > 0.999).all()


def test_order_restored_and_batching_irrelevant(texts):
    encoder = DenseEncoder(DenseConfig(device="cpu", dtype="float32"))
    forward = encoder.encode_queries(texts, batch_size=3)
    backward = encoder.encode_queries(texts[::-1])
    np.testing.assert_allclose(forward, backward[::-1], atol=1e-5)
    assert encoder.encode_queries([]).shape == (0, 384)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError):
        DenseConfig(pooling="sum")
    with pytest.raises(ConfigError):
        DenseConfig(batch_size=0)


def test_bf16_cpu_forward_equals_model_under_autocast(texts):
    import torch

    from sparsa.batching import pad_right
    from sparsa.retrieval.dense import Bf16BertForward

    encoder = DenseEncoder(DenseConfig(device="cpu", dtype="bfloat16"))
    assert Bf16BertForward.supports(encoder.model)
    ids, mask = (torch.from_numpy(a) for a in pad_right(encoder._tokenize(texts), 0))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    out = Bf16BertForward(encoder.model)(ids, mask).float()
    keep = mask.bool()
    torch.testing.assert_close(out[keep], expected[keep], atol=2e-2, rtol=0)
    assert (out[keep] - expected[keep]).abs().mean() < 1e-3
