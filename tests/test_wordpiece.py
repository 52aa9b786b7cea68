"""The Python WordPiece path gives the Rust tokenizer's ids, on real text and on adversarial strings."""

from __future__ import annotations

import random

import pytest

from sparsa.batching import TokenIds
from sparsa.models import resolve_model
from sparsa.wordpiece import WordPieceIds

ADVERSARIAL = [
    "", " ", "a", "Hello, World!", "don't stop-believing...", "x" * 101, "y" * 100 + " z", "e-mail:a@b.c",
    "Café naïve RÉSUMÉ Ångström", "αβγ-δ β-catenin 5µm ±3 °C", "中文字符和English混合", "tab\tnew\nline\rret",
    "nbsp\u00a0ideographic\u3000space", "line\u2028para\u2029sep", "zero\u200bwidth",
    "ctrl\x01\x1c\x1f\x7fchars",
    "«quoted» — dash – ‘single’ “double” …", "emoji 😀👍🏽 test", "ﬁ ligature ½ ² ℃", "unk☃word",
    "the [MASK] token", "[CLS] [SEP] inside", "hyper-\u00adsoft-hyphen", "a" + "\u0301" * 3 + "b",
    "١٢٣ arabic ١٢", "Ⅻ roman", "<html>&amp;</html>", "$100,000.00 (approx.)", "\x00null\ufffdrepl",
    "a\u0301\U0001d165\u0300b \U0001d16d\u0316x",  # marks that survive normalising: the whole-text path
]


def _tokenizer(name):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name))


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = ("abcXYZ019 .,;-'\"()[]!?\t\n" "éüßÅøαβγ中文。、「」—–…€£µ°±\u00a0\u3000\u2028\u200b\x01\x7f😀"
                "\u0301\u0316\U0001d165İΣς")
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(n)]


@pytest.mark.parametrize("name,max_length", [("splade-tiny", 512), ("minilm-l6", 256), ("splade-tiny", 8)])
@pytest.mark.parametrize("special", [True, False])
def test_same_ids_as_rust(name, max_length, special):
    tokenizer = _tokenizer(name)
    ids = TokenIds(tokenizer, max_length, add_special_tokens=special)
    assert ids._wordpiece is not None
    texts = ADVERSARIAL + _random_texts(400)
    expected = tokenizer(texts, truncation=True, max_length=max_length,
                         add_special_tokens=special)["input_ids"]
    assert ids(texts) == expected


def test_only_for_bert_wordpiece_pipelines():
    smol = _tokenizer("smollm2-135m-instruct")  # byte-level BPE: not this path
    assert WordPieceIds.from_tokenizer(smol.backend_tokenizer, 64) is None
    bert = _tokenizer("splade-tiny").backend_tokenizer
    wordpiece = WordPieceIds.from_tokenizer(bert, None)
    assert wordpiece.head == [bert.token_to_id("[CLS]")] and wordpiece.tail == [bert.token_to_id("[SEP]")]
    assert wordpiece("unk☃word") == [*wordpiece.head, bert.token_to_id("[UNK]"), *wordpiece.tail]
    assert wordpiece._seen == {"☃"} and "☃" not in wordpiece._punct + wordpiece._space  # asked once
    wordpiece("a«b»\u3000c")
    assert "«" in wordpiece._punct and "»" in wordpiece._punct and "\u3000" in wordpiece._space
