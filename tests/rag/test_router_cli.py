"""``sparsa train router`` in-process on real data: MetaQA movies written as passages (KB as text) with
MetaQA 1-hop dev questions about them, and NQ-open dev questions the passages do not cover; a real
minilm-l6 dense index built by ``sparsa index``, and the real SmolLM2 reader."""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict

import numpy as np
import pytest

from sparsa.cli.main import main
from sparsa.errors import ConfigError
from sparsa.rag.routing import FEATURES, RETRIEVAL_FEATURES, Router, read_router_model, routes_of
from tests.conftest import needs_java


@pytest.fixture(scope="module")
def routing_data(shared_data, tmp_path_factory):
    """(questions file, held-out questions file, corpus file, dense index folder)."""
    folder = tmp_path_factory.mktemp("router")
    with gzip.open(shared_data / "metaqa" / "1-hop" / "vanilla" / "qa_dev.txt.gz", "rt") as f:
        metaqa = [line.rstrip("\n").split("\t") for i, line in enumerate(f) if i % 997 == 0][:6]
    heads = {re.search(r"\[(.+?)\]", q).group(1) for q, _ in metaqa}
    triples: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    with gzip.open(shared_data / "metaqa" / "kb_reconstructed.txt.gz", "rt") as f:
        for line in f:
            head, relation, tail = line.rstrip("\n").split("|")
            if head in heads or tail in heads:
                triples[head][relation.replace("_", " ")].append(tail)
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"kb-{i}", "title": head, "text": " ".join(
        f"{r}: {', '.join(tails)}." for r, tails in sorted(rels.items()))}) + "\n"
        for i, (head, rels) in enumerate(sorted(triples.items()))))
    with (shared_data / "nq-open" / "NQ-open.dev.jsonl").open() as f:
        nq = [json.loads(next(f)) for _ in range(6)]
    rows = [{"question": q, "answers": a.split("|"), "source": "metaqa"} for q, a in metaqa]
    rows += [{"question": r["question"], "answers": r["answer"], "source": "nq"} for r in nq]
    questions, held_out = folder / "qa.jsonl", folder / "held_out.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows[0:4] + rows[6:10]))
    held_out.write_text("".join(json.dumps(r) + "\n" for r in rows[4:6] + rows[10:12]))
    index = folder / "index"
    assert main(["-q", "index", "--kind", "dense", "--corpus", str(corpus), "--out", str(index)]) == 0
    return questions, held_out, corpus, index


def _train(*argv: str) -> int:
    return main(["-q", "train", "router", "--k", "1", "--max-new-tokens", "8", *argv])


def test_train_router_from_the_cli_and_route_with_it(routing_data, tmp_path, capsys):
    from sparsa.data import load_corpus
    from sparsa.search import open_retriever

    questions, held_out, corpus_file, index = routing_data
    out, cache, rows = tmp_path / "router.json", tmp_path / "answers.jsonl", tmp_path / "rows.json"
    common = ["--questions", str(questions), "--index", str(index), "--dataset", str(corpus_file),
              "--cache", str(cache)]
    assert _train(*common, "--out", str(out), "--test-questions", str(held_out), "--rows", str(rows)) == 0
    assert "fit: 8 questions" in capsys.readouterr().err
    written = json.loads(rows.read_text())
    assert len(written["fit"]) == 8 and len(written["test"]) == 4
    assert set(written["report"]) >= {"fit", "test", "chosen", "versus_best_fixed"}
    # the chosen router against the better fixed policy on the held-out questions, paired bootstrap
    versus, test_rows = written["report"]["versus_best_fixed"], written["test"]
    fixed = versus["best_fixed"] == "always-retrieve"
    routed = routes_of(read_router_model(out), test_rows)
    f1 = lambda row, retrieve: row["f1_retrieve"] if retrieve else row["f1_recall"]
    gain = np.mean([f1(r, go) - f1(r, fixed) for r, go in zip(test_rows, routed, strict=True)])
    assert versus["f1"]["diff"] == round(float(gain), 4)
    assert versus["f1"]["ci95"][0] <= versus["f1"]["diff"] <= versus["f1"]["ci95"][1]
    for row in written["fit"] + written["test"]:
        assert set(row["features"]) == set(FEATURES) and 0.0 <= row["f1_retrieve"] <= 1.0
        assert row["features"]["retrieval_gap"] >= 0.0 and 0.0 <= row["features"]["retrieval_entropy"] <= 1.0
    corpus = load_corpus(corpus_file)
    router = Router.load(out, corpus)  # as 'sparsa ask --router' loads it
    assert router.model.info["feature_set"] == written["report"]["chosen"]
    assert router.model.info["questions"] == 8
    assert set(router.model.features) <= set(FEATURES)
    # a rerun answers nothing again (every answer is in the cache) and fits the same router
    generated = len(cache.read_text().splitlines())
    assert generated == 2 * 12
    assert _train(*common, "--out", str(tmp_path / "again.json"), "--test-questions", str(held_out)) == 0
    assert len(cache.read_text().splitlines()) == generated
    assert read_router_model(tmp_path / "again.json") == read_router_model(out)
    # several named sets: the candidates (the published Qwen router was chosen among four), the best kept
    sets = tmp_path / "sets.json"
    assert _train(*common, "--out", str(tmp_path / "sets-router.json"), "--features",
                  "popularity,confidence", "--rows", str(sets)) == 0
    report = json.loads(sets.read_text())["report"]
    assert set(report["fit"]) == {"always-retrieve", "never-retrieve", "routed (popularity)",
                                  "routed (confidence)", "oracle"}
    assert report["chosen"] in ("popularity", "confidence")
    assert read_router_model(tmp_path / "sets-router.json").info["feature_set"] == report["chosen"]
    # a router on the retriever's confidence: at ask time it sees the features it was trained on
    assert _train(*common, "--out", str(tmp_path / "retrieval.json"), "--features", "retrieval") == 0
    confident = Router.load(tmp_path / "retrieval.json", corpus, retriever=open_retriever(str(index)))
    assert confident.model.features == RETRIEVAL_FEATURES and confident.needs_retriever
    first = written["fit"][0]
    decision = confident.decide(first["question"])
    assert decision.route in ("retrieve", "recall")
    for name in RETRIEVAL_FEATURES:
        assert decision.features[name] == pytest.approx(first["features"][name], abs=1e-4)
    # or given the retriever per question; without one, the index it was fitted on (as 'sparsa ask' loads it)
    plain = Router.load(tmp_path / "retrieval.json", corpus)
    assert plain.decide(first["question"], retriever=confident.retriever) == decision
    assert plain.retriever is None and plain.decide(first["question"]) == decision
    assert plain.retriever is not None
    assert main(["-q", "ask", first["question"], "--index", str(index), "--dataset", str(corpus_file),
                 "--router", str(tmp_path / "retrieval.json"), "--mode", "auto", "--max-new-tokens", "4",
                 "--k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["route"] == decision.route
    _serve_with_router(index, corpus_file, tmp_path / "retrieval.json", first["question"], decision.route)


def _serve_with_router(index, corpus_file, router, question: str, route: str) -> None:
    """'sparsa serve --dense INDEX --dataset CORPUS --qa-router FILE' (its ServiceConfig): /qa in mode auto
    routes as 'sparsa ask --router' does."""
    pytest.importorskip("fastapi", reason="needs the 'serve' extra")
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceConfig, ServiceState, create_app

    config = ServiceConfig(indexes={"dense": index}, dataset=corpus_file, qa_model="smollm2-135m-instruct",
                           qa_router=router, index_root=index.parent, data_dir=corpus_file.parent)
    state = ServiceState(config).load(strict=True)
    assert state.pipeline.router is not None
    with TestClient(create_app(config, state), raise_server_exceptions=False) as client:
        answered = client.post("/qa", json={"question": question, "mode": "auto"})
        assert answered.status_code == 200, answered.text
        assert answered.json()["route"] == route


@pytest.mark.java
def test_train_router_from_runs_equals_searching_the_index(routing_data, tmp_path, capsys):
    """Where the index's backend cannot run (no Java on a GPU host), 'sparsa search --queries' on the
    questions files writes the runs and 'train router --run/--test-run' fits from them: the same passages,
    answers, features and router as searching the BM25 index itself (scores to the run's 6 decimals)."""
    from sparsa.data import load_corpus
    from sparsa.rag.qa_sets import read_labelled_questions
    from sparsa.search import open_retriever
    from sparsa.types import Run

    needs_java()
    questions, held_out, corpus_file, _ = routing_data
    bm25 = tmp_path / "bm25"
    assert main(["-q", "index", "--kind", "bm25", "--corpus", str(corpus_file), "--out", str(bm25)]) == 0
    fit_run, test_run = tmp_path / "fit.trec", tmp_path / "test.trec"
    for file, run in ((questions, fit_run), (held_out, test_run)):
        assert main(["-q", "search", "--index", str(bm25), "--queries", str(file), "--k", "10",
                     "--out", str(run)]) == 0
    cache = tmp_path / "answers.jsonl"
    common = ["--questions", str(questions), "--test-questions", str(held_out), "--dataset", str(corpus_file),
              "--cache", str(cache)]
    searched, from_run = tmp_path / "searched.json", tmp_path / "from-run.json"
    assert _train(*common, "--index", str(bm25), "--out", str(searched),
                  "--rows", str(tmp_path / "a.json")) == 0
    generated = len(cache.read_text().splitlines())
    runs = ["--run", str(fit_run), "--test-run", str(test_run)]
    # an NQ question shares no word with the MetaQA passages: BM25 finds nothing, so its run has no line
    empty = [q.id for q in read_labelled_questions(questions) if q.id not in Run.read_trec(fit_run)]
    assert empty and len(empty) < 8
    assert _train(*common, *runs, "--index", str(bm25), "--out", str(from_run)) == 2
    assert f"no hits for question {empty[0]!r} of {questions}" in capsys.readouterr().err
    runs.append("--missing-as-empty")
    assert _train(*common, *runs, "--index", str(bm25), "--out", str(from_run),
                  "--rows", str(tmp_path / "b.json")) == 0
    assert len(cache.read_text().splitlines()) == generated  # the same passages: every answer was cached
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    for part in ("fit", "test"):
        assert len(a[part]) == len(b[part]) > 0
        for row, again in zip(a[part], b[part], strict=True):
            assert {**row, "features": None} == {**again, "features": None}
            assert again["features"] == pytest.approx(row["features"], rel=1e-6, abs=1e-6)
    assert a["report"] == b["report"]  # the same routes: every policy's EM/F1, the choice, the bootstrap
    one, two = read_router_model(searched), read_router_model(from_run)
    assert one.features == two.features
    for name in ("mean", "scale", "weights", "bias", "threshold"):
        assert getattr(two, name) == pytest.approx(getattr(one, name), rel=1e-4, abs=1e-6), name
    assert two.info == {**one.info, "run": str(fit_run)} and one.info["index"] == str(bm25)
    assert all(row["features"]["retrieval_entropy"] == 1.0 for row in b["fit"] if row["id"] in empty)
    # no --index: the router records the run only, and asks for the retriever it cannot open itself
    bare = tmp_path / "bare.json"
    assert _train(*common, *runs, "--features", "retrieval", "--out", str(bare)) == 0
    assert "records no index" in capsys.readouterr().err
    assert read_router_model(bare).info["index"] is None
    corpus, first = load_corpus(corpus_file), a["fit"][0]
    with pytest.raises(ConfigError, match="fitted on the run .*fit.trec and records no index"):
        Router.load(bare, corpus).decide(first["question"])
    decision = Router.load(bare, corpus, retriever=open_retriever(str(bm25))).decide(first["question"])
    for name in RETRIEVAL_FEATURES:
        assert decision.features[name] == pytest.approx(first["features"][name], abs=1e-5)


def test_router_files_written_before_the_retrieval_features_still_load():
    from pathlib import Path

    from sparsa.types import Corpus, Document

    corpus = Corpus([Document("a", "Kismet directed by William Dieterle")])
    results = Path(__file__).parents[2] / "bench" / "results"
    for saved in sorted(results.glob("rag_router*.json")):
        router = Router.load(saved, corpus)
        assert router.model.features and not router.needs_retriever, saved
    coverage = Router.load(results / "rag_router_qwen1.5b.json", corpus)
    assert coverage.decide("who directed [Kismet]").route in ("retrieve", "recall")


def test_train_router_errors_are_clear(routing_data, tmp_path, capsys):
    questions, _, corpus_file, index = routing_data
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "who?", "answers": ["x"]}\n{"question": "", "answers": ["y"]}\n')
    base = ["--index", str(index), "--dataset", str(corpus_file), "--out", str(tmp_path / "r.json")]
    cases = [(["--questions", str(bad), *base], f"{bad}:2: expected a non-empty string field 'question'"),
             (["--questions", str(questions), *base, "--features", "popularity,bogus"], "--features"),
             (["--questions", str(tmp_path / "none.jsonl"), *base], "none.jsonl: file not found")]
    # fitting from runs: each questions file's run must hold every one of its questions
    run = tmp_path / "fit.trec"
    run.write_text("".join(f"q{n} Q0 kb-0 1 1.5 bm25\n" for n in range(2, 9)))
    unindexed = ["--dataset", str(corpus_file), "--out", str(tmp_path / "r.json")]
    cases += [(["--questions", str(questions), "--run", str(run), *unindexed],
               f"{run}: no hits for question 'q1' of {questions} (1 of its 8 questions missing)"),
              (["--questions", str(questions), *unindexed],
               "give --index (searched for each question) or --run"),
              (["--questions", str(questions), "--run", str(run), "--test-questions", str(questions),
                *unindexed], "--test-questions and --test-run go together"),
              (["--questions", str(questions), "--test-run", str(run), *base], "--test-run goes with --run"),
              (["--questions", str(questions), "--run", str(tmp_path / "gone.trec"), *unindexed],
               "gone.trec: file not found")]
    for argv, message in cases:
        assert _train(*argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
