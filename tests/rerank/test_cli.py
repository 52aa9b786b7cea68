"""``sparsa rerank`` in-process: a hand-written first-stage run over the SciFact slice."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from sparsa.cli.rerank import rerank
from sparsa.rerank import TildeV2Reranker
from sparsa.types import Hit, Run


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("rerank")(rerank)
    app.command("noop")(lambda: None)  # keep typer in multi-command mode, like sparsa's app
    return app


def test_rerank_command_writes_the_library_result(app, tmp_path, tilde_store, scifact_slice, shared_data):
    queries, docs = scifact_slice
    first = Run({q.id: [Hit(d.id, float(-i)) for i, d in enumerate(docs)] for q in queries})
    first.write_trec(tmp_path / "first.trec")
    out = tmp_path / "reranked.trec"
    result = CliRunner().invoke(app, ["rerank", "--run", str(tmp_path / "first.trec"), "--dataset",
                                      str(shared_data / "scifact"), "--reranker", "tildev2", "--model",
                                      str(tilde_store), "--top-k", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = Run.read_trec(out)
    reranker = TildeV2Reranker.open(tilde_store)
    for q in queries:
        expected = reranker.rerank(q, docs[:10])
        assert [h.doc_id for h in written[q.id]] == [h.doc_id for h in expected]


def test_rerank_command_errors(app, tmp_path, tilde_store, shared_data):
    from sparsa.errors import ConfigError, UnknownNameError

    Run({"1": [Hit("no-such-doc", 1.0)]}).write_trec(tmp_path / "bad.trec")
    base = ["rerank", "--run", str(tmp_path / "bad.trec"), "--dataset", str(shared_data / "scifact"),
            "--out", str(tmp_path / "x.trec")]
    result = CliRunner().invoke(app, [*base, "--reranker", "tildev3"])
    assert isinstance(result.exception, UnknownNameError) and "tildev2" in str(result.exception)
    result = CliRunner().invoke(app, [*base, "--reranker", "tildev2"])
    assert isinstance(result.exception, ConfigError) and "--model" in str(result.exception)
    result = CliRunner().invoke(app, [*base, "--model", str(tilde_store)])
    assert isinstance(result.exception, ConfigError) and "no-such-doc" in str(result.exception)


def test_rerank_pool_reranks_each_queries_judged_documents(app, tmp_path, tilde_store, scifact_slice,
                                                           shared_data):
    from sparsa.eval.pool import judged_pool_run
    from sparsa.types import Qrels

    queries, docs = scifact_slice
    by_id = {d.id: d for d in docs}
    # judged: two slice documents per query, one of them missing from the first-stage run
    judged = Qrels({q.id: {docs[i].id: 1, docs[i + 10].id: 0} for i, q in enumerate(queries)})
    judged.write_trec(tmp_path / "pool.qrels")
    first = Run({q.id: [Hit(d.id, float(-i)) for i, d in enumerate(docs[:8])] for q in queries})
    first.write_trec(tmp_path / "first.trec")
    out = tmp_path / "reranked.trec"
    result = CliRunner().invoke(app, ["rerank", "--run", str(tmp_path / "first.trec"), "--dataset",
                                      str(shared_data / "scifact"), "--model", str(tilde_store), "--top-k",
                                      "2", "--pool", str(tmp_path / "pool.qrels"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = Run.read_trec(out)
    reranker = TildeV2Reranker.open(tilde_store)
    pool = judged_pool_run(first, judged)
    for q in queries:  # every judged document is a candidate, not only the retrieved ones
        assert {h.doc_id for h in written[q.id]} == {h.doc_id for h in pool[q.id]} == set(judged[q.id])
        expected = reranker.rerank(q, [by_id[h.doc_id] for h in pool[q.id]], 2)
        assert [h.doc_id for h in written[q.id]] == [h.doc_id for h in expected]


def test_query_likelihood_cuts_passages_as_told(app, tmp_path, scifact_slice, shared_data):
    """--max-passage-tokens reaches the query-likelihood reranker (the published SciFact run used 128):
    the CLI's run equals the library reranker's with that setting, and a cut that keeps less of each
    passage scores differently."""
    from sparsa.rerank.query_likelihood import QueryLikelihoodConfig, QueryLikelihoodReranker

    queries, docs = scifact_slice
    queries, docs = queries[:2], docs[:6]
    Run({q.id: [Hit(d.id, float(-i)) for i, d in enumerate(docs)] for q in queries}).write_trec(
        tmp_path / "first.trec")
    base = ["rerank", "--run", str(tmp_path / "first.trec"), "--dataset", str(shared_data / "scifact"),
            "--reranker", "query-likelihood", "--top-k", "6"]
    result = CliRunner().invoke(app, [*base, "--max-passage-tokens", "8", "--out",
                                      str(tmp_path / "ql8.trec")])
    assert result.exit_code == 0, result.output
    written = Run.read_trec(tmp_path / "ql8.trec")
    reranker = QueryLikelihoodReranker(QueryLikelihoodConfig(max_passage_tokens=8, device="cpu"))
    full = QueryLikelihoodReranker(QueryLikelihoodConfig(device="cpu"))
    for q in queries:
        expected = reranker.rerank(q, docs)
        assert [h.doc_id for h in written[q.id]] == [h.doc_id for h in expected]
        assert [h.score for h in written[q.id]] == pytest.approx([h.score for h in expected], abs=1e-3)
        assert [h.score for h in expected] != pytest.approx([h.score for h in full.rerank(q, docs)], abs=1e-3)
    refused = CliRunner().invoke(app, [*base[:-4], "--reranker", "tildev2", "--model", "x",
                                       "--max-passage-tokens", "8", "--out", str(tmp_path / "x.trec")])
    assert "query-likelihood setting" in str(refused.exception)
