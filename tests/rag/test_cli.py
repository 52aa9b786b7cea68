"""``sparsa ask`` in-process through ``main(argv)``."""

from __future__ import annotations

import json

import pytest

from sparsa.cli.main import main


def test_ask_errors_are_clear(capsys, tmp_path):
    cases = [
        (["ask", "q?", "--mode", "sometimes"], "router.mode 'sometimes'"),
        (["ask", "   "], "the question is empty"),
        (["ask", "q?", "--index", str(tmp_path / "none")], "retrieval.dataset is needed"),
        (["ask", "q?", "--mode", "retrieve"], "needs retrieval.indexes"),
        (["ask", "q?", "--index", str(tmp_path / "none"), "--dataset", str(tmp_path)], "index not found"),
        (["ask", "q?", "--stream", "--json"], "one of --stream and --json"),
        (["ask", "q?", "--router", str(tmp_path / "r.json")], "router file not found"),
        (["ask", "q?", "--as-of", "last week"], "--as-of 'last week'"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.java
def test_ask_answers_from_the_index(capsys, tiny_bm25):
    index, corpus_file = tiny_bm25
    argv = ["ask", "How tall is Mount Fuji?", "--index", str(index), "--dataset", str(corpus_file), "--k",
            "1", "--max-new-tokens", "8", "--mode", "retrieve", "--json"]
    assert main(argv) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["route"] == "retrieve" and answer["passages"][0]["doc_id"] == "fuji"
    assert set(answer["citations"]) <= {p["doc_id"] for p in answer["passages"]}
    assert set(answer["timings"]) == {"route", "retrieve", "rerank", "read", "total"}
    assert main(["ask", "How tall is Mount Fuji?", "--index", str(index), "--dataset", str(corpus_file),
                 "--stream", "--k", "1", "--max-context-tokens", "64", "--max-new-tokens", "8"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() and "route: retrieve" in captured.err and "timings:" in captured.err
