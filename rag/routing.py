"""Retrieve-or-recall routing (WiTQA: Maekawa et al., "Retrieval Helps or Hurts? A Deeper Dive into the
Efficacy of Retrieval Augmentation to Language Models", NAACL 2024).

WiTQA finds that retrieval helps for questions about less popular subject-relation pairs and can hurt
for popular ones the LM already knows. Here popularity is estimated from what sparsa has: the corpus's
term statistics, the LM's and the retriever's confidence (the features: ``rag/route_features.py``).

A logistic regression on standardised features predicts P(retrieval helps) and a threshold on it,
both fitted on a dev split (:func:`fit_router`): gain = F1(retrieve) - F1(recall) per dev question,
label = gain > 0, weight = |gain|; the threshold maximises dev F1 and, among ties, retrieves least.
:func:`routing_rows` answers a labelled question set both ways (retrieved passages and closed-book)
with a reader and computes every feature; :func:`train_router` fits one router per feature set of
:data:`FEATURE_SETS` and keeps the best (``sparsa train router``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsa.docstore import DocumentSource
from sparsa.errors import ConfigError, DataFormatError

# The features live in their own module; TermStats, question_features and the feature names stay
# importable from here, where the CLI, the benches and the pipeline look for them.
from sparsa.rag.route_features import (
    CONFIDENCE_DEPTH,
    FEATURES,
    RETRIEVAL_FEATURES,
    TermStats,
    question_features,
)

# Candidate routers (feature sets); the first four are the ones bench/bench_rag.py reports.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "popularity": ("subject_logdf", "relation_logdf"),
    "confidence": ("lm_logprob",),
    "popularity+confidence": ("subject_logdf", "relation_logdf", "lm_logprob"),
    "popularity+coverage": ("subject_logdf", "relation_logdf", "subject_in_corpus"),
    "retrieval": RETRIEVAL_FEATURES,
    "popularity+retrieval": ("subject_logdf", "relation_logdf", *RETRIEVAL_FEATURES),
    "confidence+retrieval": ("lm_logprob", *RETRIEVAL_FEATURES),
    "all": FEATURES,
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
    """Decides retrieve vs recall per question from corpus statistics, the LM's confidence and (for a
    model that uses them) the retriever's scores."""

    def __init__(self, model: RouterModel, stats: TermStats, retriever: Any = None):
        self.model, self.stats, self.retriever = model, stats, retriever

    @property
    def needs_lm(self) -> bool:
        return "lm_logprob" in self.model.features

    @property
    def needs_retriever(self) -> bool:
        return bool(set(RETRIEVAL_FEATURES) & set(self.model.features))

    def decide(self, question: str, reader: Any = None, retriever: Any = None) -> RouteDecision:
        """``reader`` answers closed-book first when the model uses the LM's confidence; ``retriever``
        (else the one given at load) searches first when it uses the retriever's."""
        closed_book = None
        logprob = 0.0
        if self.needs_lm:
            if reader is None:
                raise ConfigError("this router uses the LM's confidence: pass the reader")
            closed_book = reader.answer(question, ())
            logprob = closed_book.mean_logprob
        scores = None
        if self.needs_retriever:
            retriever = retriever if retriever is not None else self._own_retriever()
            scores = [hit.score for hit in retriever.search_text(question, k=CONFIDENCE_DEPTH)]
        features = question_features(question, self.stats, logprob, scores)
        score = self.model.score(features)
        route = "retrieve" if score >= self.model.threshold else "recall"
        return RouteDecision(route, score, features, closed_book)

    def _own_retriever(self) -> Any:
        """The retriever given at load, else the index the router was fitted on (``info["index"]``, which
        ``sparsa train router`` records: its scores are the ones the model knows), opened once."""
        if self.retriever is None:
            index = self.model.info.get("index")
            if index is None:
                fitted = f"was fitted on the run {self.model.info['run']} and " if "run" in self.model.info \
                    else ""
                raise ConfigError(f"this router uses the retriever's scores and {fitted}records no index: "
                                  "load it with the retriever of the index it was fitted on "
                                  "(Router.load(path, corpus, retriever); sparsa ask --index)")
            from sparsa.search import open_retriever

            self.retriever = open_retriever(index)
        return self.retriever

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self.model), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, corpus: DocumentSource | None, retriever: Any = None) -> Router:
        if corpus is None:
            raise ConfigError("routing needs the indexed corpus (its term statistics): give "
                              "an index and dataset")
        return cls(read_router_model(path), TermStats.from_corpus(corpus), retriever)


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


# -- a labelled question set: features and both answers per question, then the routers
def answer_scores(recall: str, retrieve: str, answers: Sequence[str]) -> dict[str, float]:
    """SQuAD EM and F1 (best over the gold answers) of the closed-book and the retrieved answer."""
    from sparsa.rag.answer_text import exact_match, token_f1

    return {"em_recall": exact_match(recall, answers), "f1_recall": token_f1(recall, answers),
            "em_retrieve": exact_match(retrieve, answers), "f1_retrieve": token_f1(retrieve, answers)}


def routing_rows(questions: Sequence[Any], retriever: Any, corpus: DocumentSource, reader: Any, k: int = 3,
                 batch_size: int = 8, stats: TermStats | None = None, cache: Any = None) -> list[dict]:
    """One row per labelled question (objects with ``id``, ``source``, ``split``, ``question`` and
    ``answers``, such as :class:`sparsa.rag.qa_sets.QAExample`): every feature (the reader's closed-book
    confidence and the retriever's scores included), the closed-book answer and the answer from the top
    ``k`` passages, and their EM/F1. ``retriever`` searches each question, or is a :class:`sparsa.types.Run`
    keyed by question id holding its hits (:func:`check_run_questions` first: where the index's backend
    cannot run). ``cache`` (a :class:`sparsa.rag.qa_sets.AnswerCache`) keeps the answers on disk: a rerun
    generates only what it lacks."""
    from sparsa.rag.answer_text import short_answer
    from sparsa.rag.qa_sets import output_entry
    from sparsa.types import Run

    stats = stats or TermStats.from_corpus(corpus)
    depth = max(k, CONFIDENCE_DEPTH)
    if isinstance(retriever, Run):
        hits = [retriever.get(q.id, [])[:depth] for q in questions]
    else:
        hits = [retriever.search_text(q.question, k=depth) for q in questions]
    fetched = [corpus.fetch([h.doc_id for h in found[:k]]) for found in hits]
    missing = sorted({h.doc_id for found, docs in zip(hits, fetched, strict=True)
                      for h, doc in zip(found, docs, strict=False) if doc is None})
    if missing:
        raise ConfigError(f"the index returned {len(missing)} ids the corpus lacks (e.g. {missing[0]!r}): "
                          "is the dataset the corpus this index was built from?")
    items = [(q.question, []) for q in questions]
    items += [(q.question, docs) for q, docs in zip(questions, fetched, strict=True)]
    if cache is not None:
        cache.fill(reader, items, batch_size)
        entries = [cache.get(question, [d.id for d in passages]) for question, passages in items]
    else:
        entries = [output_entry(out) for out in reader.answer_batch(items, batch_size)]
    rows = []
    for q, found, closed, opened in zip(questions, hits, entries[:len(questions)], entries[len(questions):],
                                        strict=True):
        recall, retrieve = short_answer(closed["raw"]), short_answer(opened["raw"])
        features = question_features(q.question, stats, closed["mean_logprob"], [h.score for h in found])
        rows.append({"id": q.id, "source": q.source, "split": q.split, "question": q.question,
                     "answers": list(q.answers), "features": features, "recall": recall, "retrieve": retrieve,
                     **answer_scores(recall, retrieve, q.answers), "passages": [h.doc_id for h in found[:k]],
                     "citations": list(opened["citations"])})
    return rows


def check_run_questions(run: Any, run_file: str | Path, questions: Sequence[Any], questions_file: str | Path,
                        k: int, missing_as_empty: bool = False) -> list[str]:
    """Refuse a run (:class:`sparsa.types.Run`) lacking a question of ``questions`` (by id), naming both
    files and the id; with ``missing_as_empty`` such a question reads as one the retriever found nothing for
    (a TREC run has no line for it), unless the run holds none of them. Returns notes: the questions read
    as empty, and a run shallower than the router reads (the top ``k`` passages and
    :data:`CONFIDENCE_DEPTH` scores, as ``sparsa ask`` searches)."""
    depth = max(k, CONFIDENCE_DEPTH)
    missing = [q.id for q in questions if q.id not in run]
    found = f"no hits for question {missing[0]!r} of {questions_file}" if missing else ""
    if missing and (not missing_as_empty or len(missing) == len(questions)):
        hint = "" if len(missing) == len(questions) else (
            "; a question the index found nothing for has no line in a TREC run: --missing-as-empty reads "
            "it so")
        raise DataFormatError(run_file, f"{found} ({len(missing)} of its {len(questions)} questions "
                              f"missing): search them with 'sparsa search --queries {questions_file} --k "
                              f"{depth}'{hint}")
    notes = [f"{run_file}: {found} ({len(missing)} of its {len(questions)}), read as retrieving nothing"] \
        if missing else []
    deepest = max(len(run[q.id]) for q in questions if q.id in run)
    if deepest < depth:
        notes.append(f"{run_file} holds at most {deepest} hits a question; the router reads the top {depth} "
                     f"(passages and the retriever's confidence): search with --k {depth} or more unless the "
                     "corpus is that small")
    return notes


def score_routes(rows: Sequence[dict], routes: Sequence[bool]) -> dict:
    """Mean EM/F1 when each row takes its route (True: retrieve), and how many retrieve."""
    if not rows:
        return {"em": None, "f1": None, "retrievals": 0, "questions": 0}
    return {"em": round(float(routed_values(rows, routes, "em").mean()), 4),
            "f1": round(float(routed_values(rows, routes, "f1").mean()), 4),
            "retrievals": int(sum(routes)), "questions": len(rows)}


def routed_values(rows: Sequence[dict], routes: Sequence[bool], metric: str) -> np.ndarray:
    return np.array([r[f"{metric}_retrieve"] if go else r[f"{metric}_recall"]
                     for r, go in zip(rows, routes, strict=True)])


def routes_of(model: RouterModel, rows: Sequence[dict]) -> list[bool]:
    return [model.route(r["features"]) == "retrieve" for r in rows]


def fit_feature_sets(rows: Sequence[dict], feature_sets: dict[str, Sequence[str]] | None = None,
                     info: dict[str, Any] | None = None) -> dict[str, RouterModel]:
    """One router per feature set (default :data:`FEATURE_SETS`, those the rows have), fitted on ``rows``."""
    sets = FEATURE_SETS if feature_sets is None else feature_sets
    have = set(rows[0]["features"]) if rows else set()
    f1_retrieve, f1_recall = [r["f1_retrieve"] for r in rows], [r["f1_recall"] for r in rows]
    return {name: fit_router([r["features"] for r in rows], f1_retrieve, f1_recall, tuple(names), info)
            for name, names in sets.items() if set(names) <= have}


def choose_router(scores: dict[str, dict]) -> str:
    """The name with the best routed F1 (ties: fewer retrievals, then the earlier name)."""
    return max(scores, key=lambda name: (scores[name]["f1"], -scores[name]["retrievals"]))


def policy_table(rows: Sequence[dict], routers: dict[str, RouterModel]) -> dict[str, dict]:
    """Always and never retrieving, each router, and the oracle (the better route per question)."""
    table = {"always-retrieve": score_routes(rows, [True] * len(rows)),
             "never-retrieve": score_routes(rows, [False] * len(rows))}
    table.update({f"routed ({name})": score_routes(rows, routes_of(m, rows)) for name, m in routers.items()})
    table["oracle"] = score_routes(rows, [r["f1_retrieve"] > r["f1_recall"] for r in rows])
    return table


def train_router(rows: Sequence[dict], feature_sets: dict[str, Sequence[str]] | None = None,
                 test_rows: Sequence[dict] = (), info: dict[str, Any] | None = None
                 ) -> tuple[RouterModel, dict]:
    """Fit a router per feature set on ``rows`` and keep the best there (:func:`choose_router`); the
    report holds every policy's scores on ``rows`` (``fit``) and on ``test_rows`` (``test``)."""
    if not rows:
        raise ConfigError("no labelled questions to fit a router on")
    fitted = fit_feature_sets(rows, feature_sets, {**(info or {}), "questions": len(rows)})
    if not fitted:
        raise ConfigError(f"no feature set fits these rows (they have {sorted(rows[0]['features'])})")
    chosen = choose_router({name: score_routes(rows, routes_of(m, rows)) for name, m in fitted.items()})
    model = fitted[chosen]
    model = RouterModel(model.features, model.mean, model.scale, model.weights, model.bias, model.threshold,
                        {**model.info, "feature_set": chosen})
    report = {"chosen": chosen, "features": list(model.features), "fit": policy_table(rows, fitted)}
    if test_rows:
        report["test"] = policy_table(test_rows, fitted)
        report["versus_best_fixed"] = versus_best_fixed(test_rows, model)
    return model, report


def versus_best_fixed(rows: Sequence[dict], model: RouterModel) -> dict:
    """The router against the better fixed policy on ``rows`` (always or never retrieving, by F1): the
    paired bootstrap of its per-question F1 and EM gain (as ``bench/bench_rag.py`` reports it)."""
    from sparsa.eval.bootstrap import paired_bootstrap

    fixed = {"always-retrieve": [True] * len(rows), "never-retrieve": [False] * len(rows)}
    scores = {name: score_routes(rows, routes) for name, routes in fixed.items()}
    best = max(fixed, key=lambda name: (scores[name]["f1"], -scores[name]["retrievals"]))
    routes = routes_of(model, rows)
    return {"best_fixed": best, **{metric: paired_bootstrap(routed_values(rows, routes, metric),
                                                            routed_values(rows, fixed[best], metric))
                                   for metric in ("f1", "em")}}
