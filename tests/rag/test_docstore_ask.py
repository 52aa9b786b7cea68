"""``sparsa ask`` reading its passages from an on-disk document store (``sparsa doc-store``), and refusing
a store of another corpus than the index's."""

from __future__ import annotations

import json

import pytest

from sparsa.cli.main import main

pytestmark = [pytest.mark.java, pytest.mark.slow]


def test_ask_answers_from_a_document_store(capsys, tiny_bm25, tmp_path):
    index, corpus_file = tiny_bm25
    store = tmp_path / "docs"
    assert main(["-q", "doc-store", "--dataset", str(corpus_file), "--out", str(store)]) == 0
    capsys.readouterr()
    argv = ["ask", "How tall is Mount Fuji?", "--index", str(index), "--dataset", str(store), "--k", "1",
            "--max-new-tokens", "8", "--mode", "retrieve", "--json"]
    assert main(argv) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["route"] == "retrieve" and answer["passages"][0]["doc_id"] == "fuji"
    assert set(answer["citations"]) <= {"fuji"}

    # a store of another corpus (one passage more): refused before any question is read
    other = tmp_path / "other.jsonl"
    other.write_text(corpus_file.read_text() + json.dumps({"_id": "x", "text": "Another passage."}) + "\n")
    assert main(["-q", "doc-store", "--dataset", str(other), "--out", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    assert main([*argv[:4], "--dataset", str(tmp_path / "other"), *argv[6:]]) == 2
    err = capsys.readouterr().err
    assert "index index: the index was built from" in err and "(4 documents" in err, err
