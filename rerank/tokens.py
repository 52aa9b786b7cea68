"""WordPiece tokenisation for TILDE and TILDEv2, through the ``tokenizers`` library (no torch).

TILDEv2 needs only this at query time: a query becomes the ids of its tokens, without special
tokens. Passages are tokenised the same way and truncated; models add ``[CLS]``/``[SEP]``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from sparsa.errors import ConfigError

# Function words never worth adding to a passage as expansion terms (they also carry little weight
# when matched). A short list of our own; matching is on whole WordPiece tokens.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each either few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most my
myself no nor not now of off on once only or other our ours ourselves out over own same she should so some
such than that the their theirs them themselves then there these they this those through to too under until
up very was we were what when where which while who whom why will with would you your yours yourself
yourselves may might must shall us per via vs within without upon whether yet
""".split())  # noqa: SIM905 - a word list reads best as text

_WORDLIKE = re.compile(r"[a-z0-9]")


class PassageTokenizer:
    """Ids without special tokens, ``[CLS]``/``[SEP]``/``[PAD]`` ids, and the expansion vocabulary."""

    def __init__(self, tokenizer_file: str | Path):
        from tokenizers import Tokenizer

        path = Path(tokenizer_file)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ConfigError(f"no tokenizer.json at {path}")
        self.path = path
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()
        ids = [self._tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")]
        if None in ids:
            raise ConfigError(f"{path} is not a BERT WordPiece tokenizer (needs [CLS], [SEP], [PAD])")
        self.cls_id, self.sep_id, self.pad_id = ids
        self.vocab_size = self._tok.get_vocab_size()

    def ids(self, texts: Sequence[str], limit: int | None = None) -> list[np.ndarray]:
        """``int32[n_tokens]`` per text, at most ``limit`` tokens, no special tokens."""
        encoded = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids[:limit], dtype=np.int32) for e in encoded]

    def query_ids(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._tok.id_to_token(int(i)) for i in ids]

    @cached_property
    def expansion_vocabulary(self) -> np.ndarray:
        """``bool[V]``: tokens that may be added to a passage (word-like, not special, not stopwords)."""
        keep = np.zeros(self.vocab_size, dtype=bool)
        for token, index in self._tok.get_vocab().items():
            bare = token.removeprefix("##")
            keep[index] = (not (token.startswith("[") and token.endswith("]"))
                           and bool(_WORDLIKE.search(bare)) and token not in STOPWORDS)
        return keep
