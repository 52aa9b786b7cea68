"""The indexing path's tokenisation (``TokenIds``, blocks) against the plain tokenizer
call, on real models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsa.batching import TokenIds, pad_left, tokenized_blocks
from sparsa.models import resolve_model

# Texts the ASCII shortcut must leave to the normaliser or get exactly right: control characters,
# tabs and newlines, added tokens in any case (also split by a removed control character), accents,
# CJK, empty and over-long texts.
TRICKY = [
    "Hello\tWorld\nnew\rline", "a\x00b\x7fc\x0bd\x0ce", "the [MASK] token", "[cls] lower case",
    "[MA\x01SK] split", "Café au lait", "中文 text", "  leading and trailing  ", "", "UPPER CASE ONLY",
    "x" * 5000, "word " * 1000, "<|endoftext|> and <|im_start|>", "\ufffd replacement", "ÅNGSTRÖM naïve",
]


def _plain_ids(tokenizer, texts: list[str], max_length: int,
               add_special_tokens: bool = True) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length,
                     add_special_tokens=add_special_tokens)["input_ids"]


# (model, max_length, add_special_tokens): the SPLADE MLM, the dense encoder's 256, the decoder
# layout (no special tokens, (512 - 1) // 2 for echo) and a short limit that truncates nearly all.
CASES = [("splade-tiny", 512, True), ("minilm-l6", 256, True), ("smollm2-135m-instruct", 255, False),
         ("splade-tiny", 16, True)]


@pytest.mark.parametrize("model, max_length, special", CASES, ids=lambda x: str(x))
def test_token_ids_equal_plain_call_on_scifact(model, max_length, special, scifact):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    texts = [doc.full_text for doc in scifact.corpus.documents] + TRICKY
    ours = TokenIds(tokenizer, max_length, add_special_tokens=special)(texts)
    expected = _plain_ids(tokenizer, texts, max_length, special)
    mismatched = [i for i, (a, b) in enumerate(zip(ours, expected, strict=True)) if a != b]
    assert not mismatched, f"{len(mismatched)} texts differ, first {texts[mismatched[0]][:80]!r}"
    assert max(len(x) for x in ours) == max_length


def test_ascii_shortcut_used_only_where_exact():
    from transformers import AutoTokenizer

    ids = TokenIds(AutoTokenizer.from_pretrained(resolve_model("splade-tiny")), 512)
    assert ids._plain is not None  # BERT normaliser: the shortcut is on
    assert ids._normalise_ascii("Tab\there") == "tab here"
    assert ids._normalise_ascii("a\x00b") == "ab"
    for text in ("the [MASK] token", "[cls] lower", "[MA\x01SK]", "Café"):
        assert ids._normalise_ascii(text) is None


def test_tokenized_blocks_cover_texts_in_order():
    texts = [f"t{i}" for i in range(23)]
    seen = []
    for offset, block in tokenized_blocks(texts, lambda xs: [[len(x)] for x in xs], block_size=8,
                                          first_block=3):
        seen.append((offset, len(block)))
    assert seen == [(0, 3), (3, 8), (11, 8), (19, 4)]
    assert [o for o, _ in tokenized_blocks(texts, lambda xs: xs, block_size=30, first_block=5)] == [0, 5]
    assert list(tokenized_blocks([], lambda xs: xs)) == []


_POOL_CHECK = """
import json, sys
import numpy as np
from transformers import AutoTokenizer
from sparsa import batching
from sparsa.batching import TokenIds
from sparsa.models import resolve_model

texts = json.load(open(sys.argv[1]))
batching.POOL_MIN_TEXTS, batching.POOL_MIN_CORES = 8, 3
batching.os.cpu_count = lambda: 5  # 3 workers on any host
batching.BLOCK_SIZE["cuda"] = 64
ids = TokenIds(AutoTokenizer.from_pretrained(resolve_model("splade-tiny")), 128)
pooled = [x for _, block in ids.blocks(texts, "cuda") for x in block]
assert ids._pool_workers == 3, ids._pool_workers
assert all(isinstance(x, np.ndarray) and x.dtype == np.int32 for x in pooled)
assert [x.tolist() for x in pooled] == ids(texts)
assert [len(b) for _, b in ids.blocks(texts[:5], "cuda")] == [5]  # small jobs: no pool needed
ids._pool.shutdown()
print("pool ok")
"""


def test_process_pool_gives_the_same_ids(scifact, tmp_path, monkeypatch):
    """GPU jobs on many-core hosts tokenise in forked processes: same ids, as int32 arrays, in order.

    Checked in a fresh interpreter: this test process may run a JVM (the Lucene tests), which must not fork.
    """
    import json
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from sparsa import batching

    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps([doc.full_text for doc in scifact.corpus.documents[:150]] + TRICKY))
    done = subprocess.run([sys.executable, "-c", _POOL_CHECK, str(texts)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0 and "pool ok" in done.stdout, done.stderr[-2000:]
    # A JVM in the process: never fork, whatever the host.
    monkeypatch.setattr(batching, "POOL_MIN_CORES", 3)
    monkeypatch.setattr(batching.os, "cpu_count", lambda: 5)
    monkeypatch.setitem(batching.sys.modules, "jnius", batching)
    ids = TokenIds(AutoTokenizer.from_pretrained(resolve_model("splade-tiny")), 128)
    assert ids._pooled() is None and ids._pool is None


@pytest.fixture
def small_blocks(monkeypatch):
    """Several blocks, and a first block of another size, on this small input."""
    from sparsa import batching

    monkeypatch.setitem(batching.BLOCK_SIZE, "cpu", 16)
    monkeypatch.setitem(batching.FIRST_BLOCK, "cpu", 5)


def _shuffled(scifact) -> tuple[list[str], np.ndarray]:
    texts = [doc.full_text for doc in scifact.corpus.documents[:12]] + TRICKY
    order = np.random.default_rng(0).permutation(len(texts))
    return texts, order


def test_splade_vectors_equal_plain_tokenizer_path(scifact, small_blocks):
    from sparsa.kernels.splade_pool import splade_pool_ref
    from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder

    encoder = SpladeEncoder(SpladeConfig(device="cpu", pooling="chunked"))
    texts, order = _shuffled(scifact)
    ours = encoder.encode_dense([texts[i] for i in order])
    expected = torch.zeros_like(ours)
    with torch.inference_mode():
        plain = _plain_ids(encoder.tokenizer, texts, 512)
        for at, i in enumerate(order.tolist()):  # one text at a time: no padding in the reference
            input_ids = torch.tensor([plain[i]])
            hidden = encoder.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
            n = torch.tensor([input_ids.shape[1]], dtype=torch.int32)
            expected[at] = splade_pool_ref(hidden, encoder.weight, encoder.bias, torch.zeros_like(n), n)[0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert ((ours > 0).sum(dim=1) > 0).all()


def test_dense_vectors_equal_plain_tokenizer_path(scifact, small_blocks):
    from sparsa.retrieval.dense import DenseConfig, DenseEncoder, pool_hidden

    encoder = DenseEncoder(DenseConfig(device="cpu", dtype="float32"))
    texts, order = _shuffled(scifact)
    ours = encoder.encode([texts[i] for i in order])
    plain = _plain_ids(encoder.tokenizer, texts, encoder.max_length)
    with torch.inference_mode():
        expected = []
        for i in order.tolist():
            input_ids = torch.tensor([plain[i]])
            mask = torch.ones_like(input_ids)
            hidden = encoder.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            expected.append(torch.nn.functional.normalize(pool_hidden(hidden, mask, "mean"),
                                                          dim=-1)[0].numpy())
    np.testing.assert_allclose(ours, np.stack(expected), atol=1e-5)


def test_map_batches_keeps_order_and_restores_torch_threads():
    import time

    from sparsa.batching import map_batches

    threads = torch.get_num_threads()
    seen = []

    def slow_square(x):
        seen.append(torch.get_num_threads())
        time.sleep(0.01 * (x % 3))
        return x * x

    assert list(map_batches(slow_square, list(range(10)), workers=3)) == [x * x for x in range(10)]
    assert set(seen) == {1} and torch.get_num_threads() == threads
    assert list(map_batches(slow_square, [1, 2], workers=1)) == [1, 4]


def test_pad_left_ends_every_row_at_the_last_column():
    ids, mask, positions = pad_left([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 0]]
