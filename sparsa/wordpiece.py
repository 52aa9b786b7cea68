"""BERT WordPiece token ids in Python, with a word cache: the same ids as the Rust tokenizer, faster.

The Rust ``tokenizers`` pipeline pre-tokenises and runs WordPiece on every word of every text; on
SciFact that costs ~0.3 ms per abstract per core, which bounded GPU indexing jobs by the host's
tokenisation. Text repeats its words: splitting a normalised text with one regular expression and
looking each word up in a dictionary of finished words is ~5x faster per core, and the greedy
longest-match WordPiece runs once per distinct word.

:class:`WordPieceIds` is built from a ``tokenizers.Tokenizer`` only when that tokenizer is exactly a
BERT pipeline (``BertPreTokenizer`` + ``WordPiece`` + a single-sequence post-processor) and takes
*normalised* text (the caller normalises: see ``sparsa.batching.TokenIds``). What counts as
whitespace and punctuation for a non-ASCII character is asked of the tokenizer's own pre-tokenizer,
once per character, so Unicode tables can never disagree with it. Tests compare with the Rust
tokenizer on real corpora and on adversarial strings.
"""

from __future__ import annotations

import itertools
import json
import re
import string
import unicodedata

# Rust's char::is_whitespace (Unicode White_Space) restricted to ASCII, and Rust's
# char::is_ascii_punctuation: what the BERT pre-tokenizer splits on and isolates.
_ASCII_SPACE = "\t\n\x0b\x0c\r "
_ASCII_PUNCT = string.punctuation


def _words_pattern(space: str, punct: str) -> re.Pattern:
    """Runs of other characters, or one punctuation character; whitespace matches nothing (dropped)."""
    return re.compile(f"[^{re.escape(space + punct)}]+|[{re.escape(punct)}]")


_ASCII_WORDS = _words_pattern(_ASCII_SPACE, _ASCII_PUNCT)
_CACHE_LIMIT = 2_000_000  # distinct words kept; the cache restarts when full


class WordPieceIds:
    """``normalised text -> token ids`` (special tokens and right truncation as the tokenizer does)."""

    def __init__(self, vocab: dict[str, int], unk_id: int, prefix: str, max_chars: int, pre_tokenizer: object,
                 specials: tuple[list[int], list[int]], max_length: int | None):
        self.vocab, self.unk_id, self.prefix, self.max_chars = vocab, unk_id, prefix, max_chars
        self.pre_tokenizer = pre_tokenizer
        self.head, self.tail = specials
        self.max_length = max_length
        self.budget = None if max_length is None else max(0, max_length - len(self.head) - len(self.tail))
        self._words = _WordCache(self._word_ids)
        # What the pre-tokenizer drops and isolates; non-ASCII characters join once seen in a text.
        self._space, self._punct, self._seen = _ASCII_SPACE, _ASCII_PUNCT, set()
        self._words_re = _ASCII_WORDS

    @classmethod
    def from_tokenizer(cls, backend: object, max_length: int | None,
                       add_special_tokens: bool = True) -> WordPieceIds | None:
        """For a BERT WordPiece ``tokenizers.Tokenizer`` with right truncation; None for any other."""
        config = json.loads(backend.to_str())
        model, pre = config.get("model") or {}, config.get("pre_tokenizer") or {}
        truncation = config.get("truncation") or {}
        if model.get("type") != "WordPiece" or pre.get("type") != "BertPreTokenizer":
            return None
        if truncation and (truncation.get("direction") != "Right" or truncation.get("stride")):
            return None
        vocab = backend.get_vocab(with_added_tokens=False)
        if model["unk_token"] not in vocab:
            return None
        specials = ([], [])
        if add_special_tokens:
            bare = backend.encode("a b", add_special_tokens=False).ids
            full = backend.encode("a b", add_special_tokens=True).ids
            at = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), None)
            if (at is None
                    or backend.encode("", add_special_tokens=True).ids != full[:at] + full[at + len(bare):]):
                return None  # a post-processor that does more than wrap the sequence
            specials = (full[:at], full[at + len(bare):])
        return cls(vocab, vocab[model["unk_token"]], model["continuing_subword_prefix"],
                   model["max_input_chars_per_word"], backend.pre_tokenizer, specials, max_length)

    def __call__(self, normalised: str) -> list[int]:
        ids = list(itertools.chain.from_iterable(map(self._words.__getitem__, self._split(normalised))))
        if self.budget is not None and len(ids) > self.budget:
            del ids[self.budget:]
        return self.head + ids + self.tail if self.head or self.tail else ids

    def _split(self, text: str) -> list[str]:
        """The pre-tokenizer's words: split at whitespace, each punctuation character on its own."""
        if not text.isascii():
            unseen = {c for c in set(text) if not c.isascii()} - self._seen
            if unseen:
                self._learn(unseen)
        return self._words_re.findall(text)

    def _learn(self, chars: set[str]) -> None:
        """Ask the pre-tokenizer what each new character is (between two letters); rebuild the pattern."""
        grew = False
        for char in chars:
            pieces = self.pre_tokenizer.pre_tokenize_str(f"a{char}a")
            if len(pieces) == 3:
                self._punct += char
            elif len(pieces) == 2:
                self._space += char
            grew |= len(pieces) != 1
        self._seen |= chars
        if grew:
            self._words_re = _words_pattern(self._space, self._punct)

    def _word_ids(self, word: str) -> list[int]:
        """Greedy longest-match-first WordPiece of one word (``[UNK]`` if any part has no match)."""
        vocab, ids = self.vocab, []
        if len(word) > self.max_chars:
            ids = [self.unk_id]
        else:
            start = 0
            while start < len(word):
                end, found = len(word), None
                while start < end:
                    piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                    found = vocab.get(piece)
                    if found is not None:
                        break
                    end -= 1
                if found is None:
                    ids = [self.unk_id]
                    break
                ids.append(found)
                start = end
        return ids


class _WordCache(dict):
    """word -> WordPiece ids, computed on first lookup (``dict.__getitem__`` stays in C for hits)."""

    def __init__(self, compute):
        super().__init__()
        self.compute = compute

    def __missing__(self, word: str) -> list[int]:
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        ids = self[word] = self.compute(word)
        return ids


class CharNormaliser(dict):
    """A ``BertNormalizer`` as a ``str.translate`` table, each non-ASCII character asked of
    the normaliser once.

    The normaliser acts character by character (clean text, CJK padding, lower case, NFD + dropping
    nonspacing marks) except for NFD's canonical reordering of combining marks, which changes nothing
    once the marks are dropped. A character whose mapping keeps a combining mark is therefore "risky":
    texts holding one go to the normaliser whole (:meth:`normalise` returns None).
    """

    def __init__(self, normalizer: object):
        super().__init__()
        self.normalizer = normalizer
        self.risky: set[str] = set()

    def __missing__(self, code: int) -> str:
        mapped = self[code] = self.normalizer.normalize_str(chr(code))
        if any(unicodedata.combining(c) for c in mapped):
            self.risky.add(chr(code))
        return mapped

    def normalise(self, text: str) -> str | None:
        normalised = text.translate(self)
        if self.risky and any(c in text for c in self.risky):
            return None
        return normalised
