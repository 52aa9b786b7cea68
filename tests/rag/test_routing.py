"""Routing decisions on fixed popularity inputs, feature extraction, fitting, router files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparsa.errors import ConfigError, DataFormatError
from sparsa.rag.route_features import TermStats, question_features, retrieval_features, subject_and_relation
from sparsa.rag.routing import Router, RouterModel, best_threshold, fit_router, read_router_model

TEXTS = ["Kismet directed_by William Dieterle", "Kismet starred_actors Marlene Dietrich",
         "Paris is the capital of France", "The river flows through Paris"]


@pytest.fixture(scope="module")
def stats() -> TermStats:
    return TermStats.from_corpus(TEXTS)


def test_term_stats_and_subjects(stats):
    assert stats.num_documents == 4 and stats.df["kismet"] == 2 and stats.df["paris"] == 2
    assert stats.logdf(["Kismet", "Dieterle"]) == pytest.approx(math.log(2 / 5))  # the rarest word
    assert stats.logdf(["unseen"]) == pytest.approx(math.log(1 / 5))
    assert subject_and_relation("who directed [Kismet]", stats) == (["Kismet"], ["directed"])
    subject, relation = subject_and_relation("What is the capital of Marlene Dietrich's France?", stats)
    assert subject == ["Marlene", "Dietrich's", "France"] and relation == ["capital"]
    assert subject_and_relation("how tall is the tallest tower", stats)[0] in (["tall"],
                                                                               ["tallest"], ["tower"])
    assert subject_and_relation("", stats) == ([], [])


def test_subject_in_corpus_feature(stats):
    assert question_features("who directed [Kismet]", stats)["subject_in_corpus"] == 1.0
    assert question_features("who directed [Kismet Zebulon]", stats)["subject_in_corpus"] == 0.0
    assert question_features("where does Zebulon live", stats)["subject_in_corpus"] == 0.0
    assert question_features("", stats)["subject_in_corpus"] == 0.0


def test_routing_decisions_on_fixed_popularity():
    # P(retrieval helps) falls with the subject's popularity (WiTQA): popular subjects are recalled.
    model = RouterModel(("subject_logdf", "lm_logprob"), (0.0, 0.0), (1.0, 1.0), (-2.0, -1.0), -4.0, 0.5)
    assert model.route({"subject_logdf": -6.0, "lm_logprob": -1.0}) == "retrieve"  # rare, unsure
    assert model.route({"subject_logdf": -0.5, "lm_logprob": -0.1}) == "recall"  # popular, confident
    assert model.route({"subject_logdf": -1.5, "lm_logprob": -0.5}) == "recall"  # 3.0 + 0.5 - 4 < 0
    assert model.route({"subject_logdf": -1.5, "lm_logprob": -1.5}) == "retrieve"  # 3.0 + 1.5 - 4 > 0
    assert model.score({"subject_logdf": -2.0, "lm_logprob": 0.0}) == pytest.approx(0.5)
    always = RouterModel(("subject_logdf",), (0.0,), (1.0,), (0.0,), 0.0, 0.0)
    never = RouterModel(("subject_logdf",), (0.0,), (1.0,), (0.0,), 0.0, math.inf)
    assert (always.route({"subject_logdf": 0.0}) == "retrieve"
            and never.route({"subject_logdf": 0.0}) == "recall")


def test_router_decides_from_corpus_statistics(stats):
    model = RouterModel(("subject_logdf",), (0.0,), (1.0,), (-5.0,), -5.0, 0.5)  # retrieve iff logdf < -1
    router = Router(model, stats)
    assert router.decide("who directed [Kismet]").route == "recall"  # log(3/5) = -0.51
    rare = router.decide("who directed [Casablanca]")  # log(1/5) = -1.61
    assert rare.route == "retrieve" and rare.closed_book is None
    assert rare.features == question_features("who directed [Casablanca]", stats)
    with pytest.raises(ConfigError, match="reader"):
        Router(RouterModel(("lm_logprob",), (0.0,), (1.0,), (1.0,), 0.0, 0.5), stats).decide("q?")


def test_fit_router_learns_which_questions_retrieval_helps():
    rng = np.random.default_rng(0)
    logdf = rng.uniform(-8, 0, 200)
    helps = logdf < -4  # retrieval helps only for rare subjects
    f1_retrieve = np.where(helps, 1.0, 0.0)
    f1_recall = np.where(helps, 0.0, rng.choice([0.0, 1.0], 200))
    feats = [{"subject_logdf": x, "relation_logdf": 0.0, "lm_logprob": 0.0} for x in logdf]
    model = fit_router(feats, f1_retrieve, f1_recall, names=("subject_logdf",))
    routes = np.array([model.route(f) == "retrieve" for f in feats])
    routed = np.where(routes, f1_retrieve, f1_recall).mean()
    assert routed >= max(f1_retrieve.mean(), f1_recall.mean())
    assert routes.sum() < 200 and (routes == helps).mean() > 0.95
    with pytest.raises(ConfigError):
        fit_router([], [], [])


def test_threshold_ties_prefer_fewer_retrievals():
    scores = np.array([0.1, 0.4, 0.9])
    same = np.array([1.0, 1.0, 1.0])
    assert best_threshold(scores, same, same) == math.inf  # no gain anywhere: never retrieve
    assert best_threshold(scores, np.array([0.0, 1.0, 1.0]), np.array([0.0, 0.0, 0.0])) == 0.4


def test_router_files_round_trip(tmp_path, stats):
    from sparsa.types import Corpus, Document

    model = RouterModel(("subject_logdf", "lm_logprob"), (1.0, 2.0), (0.5, 1.5), (0.3, -0.2), 0.1, 0.4,
                        {"dev": 10})
    Router(model, stats).save(tmp_path / "router.json")
    assert read_router_model(tmp_path / "router.json") == model
    loaded = Router.load(tmp_path / "router.json", Corpus([Document("a", "text")]))
    assert loaded.model == model and loaded.stats.num_documents == 1
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="bad.json"):
        read_router_model(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="unknown routing features"):
        RouterModel(("popularity",), (0.0,), (1.0,), (1.0,), 0.0, 0.5)
    with pytest.raises(ConfigError, match="corpus"):
        Router.load(tmp_path / "router.json", None)


def test_retrieval_features_from_the_score_distribution(stats):
    p = np.exp([0.0, -2.0, -2.0])
    p /= p.sum()
    entropy = float(-(p * np.log(p)).sum() / math.log(3))
    assert retrieval_features([1.0, 3.0, 1.0]) == pytest.approx(
        {"retrieval_top1": 3.0, "retrieval_gap": 2.0, "retrieval_entropy": entropy})
    assert retrieval_features([0.5] * 4)["retrieval_entropy"] == pytest.approx(1.0)  # nothing stands out
    assert retrieval_features([2.0]) == {"retrieval_top1": 2.0, "retrieval_gap": 0.0,
                                         "retrieval_entropy": 0.0}
    assert retrieval_features([]) == {"retrieval_top1": 0.0, "retrieval_gap": 0.0, "retrieval_entropy": 1.0}
    many = [10.0, 9.0, *[0.0] * 20]  # only the top 10 count
    assert retrieval_features(many)["retrieval_entropy"] == pytest.approx(retrieval_features(many[:10])[
        "retrieval_entropy"])
    with_scores = question_features("who directed [Kismet]", stats, -0.5, [3.0, 1.0, 1.0])
    assert with_scores == {**question_features("who directed [Kismet]", stats, -0.5),
                           **retrieval_features([3.0, 1.0, 1.0])}


def test_router_on_retriever_scores_needs_the_retriever(stats):
    model = RouterModel(("retrieval_gap",), (0.0,), (1.0,), (-3.0,), 3.0, 0.5)  # retrieve iff the gap < 1
    with pytest.raises(ConfigError, match="retriever's scores"):
        Router(model, stats).decide("q?")  # the CLI test decides with a real retriever


def test_answer_cache_keys_stay_those_of_the_bench_cache(tmp_path):
    """Entries written by bench/bench_rag.py's cache before it moved to the library keep their keys."""
    import hashlib
    import json

    from sparsa.rag import reader as prompts
    from sparsa.rag.config import ReaderConfig
    from sparsa.rag.qa_sets import AnswerCache

    config = ReaderConfig(max_new_tokens=16, max_context_tokens=400, max_passage_tokens=128,
                          attention="full", device="cpu", dtype="float32")
    cache = AnswerCache(tmp_path / "answers.jsonl", "/models/smollm2", config)
    settings = ["/models/smollm2", 400, 128, 16, "full", "cpu", "float32", []]
    assert cache.settings == settings
    tag = json.dumps([settings, prompts.RECALL_SYSTEM, prompts.RECALL_EXAMPLE])
    assert cache.key("q?", []) == hashlib.sha1(json.dumps([tag, "q?", []]).encode()).hexdigest()
