"""What the retrieve-or-recall router looks at: a question's popularity in the corpus, the LM's confidence
and the retriever's (``rag/routing.py`` fits and applies the router). Per question:

- ``subject_logdf``: how often the question's subject entity occurs in the indexed corpus, as
  ``log((df + 1) / (N + 1))``; the subject is the bracketed ``[entity]``, else the rarest capitalised
  span, else the rarest content word (a multi-word span's df is its rarest word's: an upper bound);
- ``relation_logdf``: the same for the question's other content words (the relation), averaged;
- ``subject_in_corpus``: 1 if every word of the subject occurs in the corpus, else 0. WiTQA's rule
  (rare subject -> retrieve) assumes the corpus covers the question; when the subject is absent from
  it, retrieval has nothing to offer and the LM's own memory is the only chance;
- ``lm_logprob``: the LM's own confidence, the mean token log-probability of its closed-book answer;
- the retriever's confidence, from the scores of its top 10 hits for the question
  (:func:`retrieval_features`): ``retrieval_top1`` (the best score), ``retrieval_gap`` (best minus
  second) and ``retrieval_entropy`` (the entropy of the scores' softmax over its maximum, log n: 1 when
  no hit stands out, 0 for one clear hit).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from sparsa.docstore import WORD as _WORD
from sparsa.docstore import DocumentSource, count_document_frequencies

RETRIEVAL_FEATURES = ("retrieval_top1", "retrieval_gap", "retrieval_entropy")
FEATURES = ("subject_logdf", "relation_logdf", "subject_in_corpus", "lm_logprob", *RETRIEVAL_FEATURES)
CONFIDENCE_DEPTH = 10  # hits whose scores give the retriever's confidence
_BRACKETED = re.compile(r"\[([^\[\]]+)\]")
_STOPWORDS = frozenset(["a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and",
                        "or", "is", "was", "were", "are", "be", "been", "being", "do", "does", "did", "what",
                        "which", "who", "whom", "whose", "when", "where", "why", "how", "that", "this",
                        "these", "those", "it", "its", "as", "into", "about", "than", "then", "there",
                        "their", "his", "her", "he", "she", "they", "them", "you", "your", "we", "our", "i",
                        "me", "my", "has", "have", "had", "not", "no", "can", "could", "would", "should",
                        "will", "shall", "may", "might", "must", "name", "one"])


class TermStats:
    """Document frequencies of lower-cased word tokens over a corpus (title and text). ``df``: anything
    with ``get(word, 0)``: a ``Counter``, or a document store's table (read per word, never loaded)."""

    def __init__(self, df: Any, num_documents: int):
        self.df, self.num_documents = df, num_documents

    @classmethod
    def from_corpus(cls, corpus: DocumentSource | Iterable[str]) -> TermStats:
        """From a corpus or store (``sparsa.docstore.DocumentSource``: a store counted them when it was
        built), or counted over texts."""
        if isinstance(corpus, DocumentSource):
            return cls(corpus.document_frequencies(), len(corpus))
        texts = list(corpus)
        return cls(count_document_frequencies(texts), len(texts))

    def min_df(self, words: Sequence[str]) -> int:
        """Document frequency of the rarest word (an upper bound on the phrase's df; 0 without words)."""
        return min((self.df.get(w.lower(), 0) for w in words), default=0)

    def logdf(self, words: Sequence[str]) -> float:
        """``log((df + 1) / (N + 1))`` of the rarest word."""
        return math.log((self.min_df(words) + 1) / (self.num_documents + 1))


def subject_and_relation(question: str, stats: TermStats) -> tuple[list[str], list[str]]:
    """The subject entity's words and the remaining content words (the relation) of a question."""
    bracketed = _BRACKETED.findall(question)
    if bracketed:
        subject = _WORD.findall(bracketed[0])
        rest = _WORD.findall(_BRACKETED.sub(" ", question))
    else:
        words = _WORD.findall(question)
        spans: list[list[int]] = []
        for i, word in enumerate(words):
            capital = word[0].isupper() or word[0].isdigit()
            if capital and not (i == 0 and word.lower() in _STOPWORDS):
                if spans and spans[-1][-1] == i - 1:
                    spans[-1].append(i)
                else:
                    spans.append([i])
        if not spans:  # no capitalised span: the rarest content word stands in for the subject
            content = [i for i, w in enumerate(words) if w.lower() not in _STOPWORDS]
            spans = [[i] for i in content] or [[i] for i in range(len(words))]
        if not spans:
            return [], []
        best = min(spans, key=lambda span: stats.logdf([words[i] for i in span]))
        subject = [words[i] for i in best]
        rest = [w for i, w in enumerate(words) if i not in best]
    relation = [w for w in rest if w.lower() not in _STOPWORDS]
    return subject, relation


def question_features(question: str, stats: TermStats, lm_logprob: float = 0.0,
                      scores: Sequence[float] | None = None) -> dict[str, float]:
    """The question's features; the retriever's confidence too when its hit ``scores`` are given."""
    subject, relation = subject_and_relation(question, stats)
    relation_logdfs = [stats.logdf([w]) for w in relation]
    features = {
        "subject_logdf": stats.logdf(subject) if subject else 0.0,
        "relation_logdf": float(np.mean(relation_logdfs)) if relation_logdfs else 0.0,
        "subject_in_corpus": float(stats.min_df(subject) > 0),
        "lm_logprob": lm_logprob,
    }
    return features if scores is None else {**features, **retrieval_features(scores)}


def retrieval_features(scores: Sequence[float]) -> dict[str, float]:
    """The retriever's confidence from its hit scores: best score, best minus second, and the normalised
    entropy of ``softmax(scores)`` over the top :data:`CONFIDENCE_DEPTH` (no hits: 0, 0, 1)."""
    top = np.sort(np.asarray(scores, dtype=np.float64))[::-1][:CONFIDENCE_DEPTH]
    if top.size == 0:
        return {"retrieval_top1": 0.0, "retrieval_gap": 0.0, "retrieval_entropy": 1.0}
    entropy = 0.0
    if top.size > 1:
        p = np.exp(top - top[0])
        p /= p.sum()
        entropy = float(-(p * np.log(np.maximum(p, 1e-300))).sum() / math.log(top.size))
    return {"retrieval_top1": float(top[0]), "retrieval_gap": float(top[0] - top[1]) if top.size > 1 else 0.0,
            "retrieval_entropy": entropy}
