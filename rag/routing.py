"""Retrieve-or-recall routing (WiTQA: Maekawa et al., "Retrieval Helps or Hurts? A Deeper Dive into the
Efficacy of Retrieval Augmentation to Language Models", NAACL 2024).

WiTQA finds that retrieval helps for questions about less popular subject-relation pairs and can hurt
for popular ones the LM already knows. Here popularity is estimated from what sparsa has, per question:

- ``subject_logdf``: how often the question's subject entity occurs in the indexed corpus, as
  ``log((df + 1) / (N + 1))``; the subject is the bracketed ``[entity]``, else the rarest capitalised
  span, else the rarest content word (a multi-word span's df is its rarest word's: an upper bound);
- ``relation_logdf``: the same for the question's other content words (the relation), averaged;
- ``subject_in_corpus``: 1 if every word of the subject occurs in the corpus, else 0. WiTQA's rule
  (rare subject -> retrieve) assumes the corpus covers the question; when the subject is absent from
  it, retrieval has nothing to offer and the LM's own memory is the only chance;
- ``lm_logprob``: the LM's own confidence, the mean token log-probability of its closed-book answer.

A logistic regression on standardised features predicts P(retrieval helps) and a threshold on it,
both fitted on a dev split (:func:`fit_router`): gain = F1(retrieve) - F1(recall) per dev question,
label = gain > 0, weight = |gain|; the threshold maximises dev F1 and, among ties, retrieves least.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsa.errors import ConfigError, DataFormatError
from sparsa.types import Corpus

FEATURES = ("subject_logdf", "relation_logdf", "subject_in_corpus", "lm_logprob")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")
_BRACKETED = re.compile(r"\[([^\[\]]+)\]")
_STOPWORDS = frozenset(["a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and", "or", "is", "was", "were", "are", "be", "been", "being", "do", "does", "did", "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "that", "this", "these", "those", "it", "its", "as", "into", "about", "than", "then", "there", "their", "his", "her", "he", "she", "they", "them", "you", "your", "we", "our", "i", "me", "my", "has", "have", "had", "not", "no", "can", "could", "would", "should", "will", "shall", "may", "might", "must", "name", "one"])


class TermStats:
    """Document frequencies of lower-cased word tokens over a corpus (title and text)."""

    def __init__(self, df: Counter[str], num_documents: int):
        self.df, self.num_documents = df, num_documents

    @classmethod
    def from_corpus(cls, corpus: Corpus | Iterable[str]) -> TermStats:
        texts = (doc.full_text for doc in corpus.documents) if isinstance(corpus, Corpus) else corpus
        df: Counter[str] = Counter()
        n = 0
        for text in texts:
            df.update({w.lower() for w in _WORD.findall(text)})
            n += 1
        return cls(df, n)

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


def question_features(question: str, stats: TermStats, lm_logprob: float = 0.0) -> dict[str, float]:
    subject, relation = subject_and_relation(question, stats)
    relation_logdfs = [stats.logdf([w]) for w in relation]
    return {
        "subject_logdf": stats.logdf(subject) if subject else 0.0,
        "relation_logdf": float(np.mean(relation_logdfs)) if relation_logdfs else 0.0,
        "subject_in_corpus": float(stats.min_df(subject) > 0),
        "lm_logprob": lm_logprob,
    }


@dataclass(frozen=True, slots=True)
class RouteDecision:
    route: str  # "retrieve" | "recall"
    score: float  # P(retrieval helps)
    features: dict[str, float]
    closed_book: Any = None  # the reader's closed-book output when it was computed to decide


@dataclass(frozen=True, slots=True)
class RouterModel:
    """A logistic regression over standardised ``features`` plus a decision threshold."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float
    info: dict[str, Any] = field(default_factory=dict)  # what it was fitted on

    def __post_init__(self) -> None:
        unknown = set(self.features) - set(FEATURES)
        if unknown:
            raise ConfigError(f"unknown routing features {sorted(unknown)}; known: {', '.join(FEATURES)}")
        if not len(self.features) == len(self.mean) == len(self.scale) == len(self.weights):
            raise ConfigError("a router needs one mean, scale and weight per feature")

    def score(self, features: dict[str, float]) -> float:
        x = (np.array([features[f] for f in self.features]) - self.mean) / np.asarray(self.scale)
        return float(1 / (1 + math.exp(-(float(x @ np.asarray(self.weights)) + self.bias))))

    def route(self, features: dict[str, float]) -> str:
        return "retrieve" if self.score(features) >= self.threshold else "recall"


class Router:
    """Decides retrieve vs recall per question from corpus statistics and the LM's confidence."""

    def __init__(self, model: RouterModel, stats: TermStats):
        self.model, self.stats = model, stats

    @property
    def needs_lm(self) -> bool:
        return "lm_logprob" in self.model.features

    def decide(self, question: str, reader: Any = None) -> RouteDecision:
        """``reader`` answers closed-book first when the model uses the LM's confidence."""
        closed_book = None
        logprob = 0.0
        if self.needs_lm:
            if reader is None:
                raise ConfigError("this router uses the LM's confidence: pass the reader")
            closed_book = reader.answer(question, ())
            logprob = closed_book.mean_logprob
        features = question_features(question, self.stats, logprob)
        score = self.model.score(features)
        route = "retrieve" if score >= self.model.threshold else "recall"
        return RouteDecision(route, score, features, closed_book)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self.model), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, corpus: Corpus | None) -> Router:
        if corpus is None:
            raise ConfigError("routing needs the indexed corpus (its term statistics): give an index and dataset")
        return cls(read_router_model(path), TermStats.from_corpus(corpus))


def read_router_model(path: str | Path) -> RouterModel:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        return RouterModel(**{**raw, **{k: tuple(raw[k]) for k in ("features", "mean", "scale", "weights")}})
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise DataFormatError(path, f"not a router file ({exc})") from None


def fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray, l2: float = 1e-2,
                 steps: int = 50) -> tuple[np.ndarray, float]:
    """Weighted L2-regularised logistic regression by Newton's method; ``x`` float[n, d] standardised."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(xb.shape[1])
    reg = np.full(xb.shape[1], l2)
    reg[-1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(xb @ theta)))
        grad = xb.T @ (weights * (p - y)) + reg * theta
        hess = (xb * (weights * p * (1 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:-1], float(theta[-1])


def fit_router(features: Sequence[dict[str, float]], f1_retrieve: Sequence[float], f1_recall: Sequence[float],
               names: Sequence[str] = FEATURES, info: dict[str, Any] | None = None) -> RouterModel:
    """Fit the logistic model and the threshold on dev questions (see the module docstring)."""
    if not features or not len(features) == len(f1_retrieve) == len(f1_recall):
        raise ConfigError("fit_router needs one feature dict and two F1 scores per dev question")
    x = np.array([[f[n] for n in names] for f in features], dtype=np.float64)
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    gain = np.asarray(f1_retrieve, dtype=np.float64) - np.asarray(f1_recall, dtype=np.float64)
    weights, bias = fit_logistic((x - mean) / scale, (gain > 0).astype(np.float64), np.abs(gain))
    model = RouterModel(tuple(names), tuple(mean), tuple(scale), tuple(weights), bias, 0.5, dict(info or {}))
    scores = np.array([model.score(f) for f in features])
    threshold = best_threshold(scores, np.asarray(f1_retrieve), np.asarray(f1_recall))
    return RouterModel(model.features, model.mean, model.scale, model.weights, bias, threshold, model.info)


def best_threshold(scores: np.ndarray, f1_retrieve: np.ndarray, f1_recall: np.ndarray) -> float:
    """The threshold with the best mean routed F1; among ties, the one that retrieves least."""
    candidates = np.unique(np.concatenate([scores, [np.inf]]))
    best, best_key = float(np.inf), (-np.inf, 0)
    for t in candidates:
        retrieve = scores >= t
        key = (float(np.where(retrieve, f1_retrieve, f1_recall).mean()), -int(retrieve.sum()))
        if key > best_key:
            best, best_key = float(t), key
    return best
