"""The on-disk document store (``sparsa.docstore``): built once, read by id, refused for another corpus,
atomic, and interchangeable with the in-memory ``Corpus`` wherever passages are looked up."""

from __future__ import annotations

import json
import os

import pytest

from sparsa.artifacts import corpus_identity, read_manifest
from sparsa.config import load_settings
from sparsa.data import load_corpus
from sparsa.docstore import (
    DocStore,
    DocumentSource,
    build_docstore,
    check_source,
    open_documents,
    require_documents,
    store_path,
)
from sparsa.errors import ConfigError, CorpusMismatchError, DataFormatError, IndexCorruptError
from sparsa.rag.routing import TermStats
from sparsa.types import Document

DOCS = [
    {"_id": "b2", "title": "Mount Fuji", "text": "Mount Fuji is the highest mountain in Japan.",
     "metadata": {"date": "2022-01-07"}},
    {"_id": "a1", "title": "Eiffel Tower", "text": "The Eiffel Tower in Paris was completed in 1889."},
    {"_id": "é3", "title": "", "text": "The Amazon flows through Peru, Colombia and Brazil; Japan is far."},
]


def write_corpus(path, docs=DOCS):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


@pytest.fixture()
def corpus_file(tmp_path):
    return write_corpus(tmp_path / "corpus.jsonl")


def test_store_reads_what_the_corpus_holds(corpus_file, tmp_path):
    store = build_docstore(corpus_file, tmp_path / "store", name="tiny", show_progress=False)
    corpus = load_corpus(corpus_file)
    assert isinstance(store, DocumentSource) and isinstance(corpus, DocumentSource)
    assert len(store) == 3 and "a1" in store and "zz" not in store and "é3" in store
    ids = ["é3", "zz", "b2", "a1"]
    assert store.fetch(ids) == corpus.fetch(ids)  # same documents, same order, None where absent
    assert store.fetch(["b2"])[0] == Document("b2", DOCS[0]["text"], "Mount Fuji", {"date": "2022-01-07"})
    assert store.fetch([f"x{i}" for i in range(2000)] + ["a1"])[-1].id == "a1"  # > one query
    # the identity index manifests record: the same hash however it is computed
    assert store.identity == corpus_identity(["a1", "b2", "é3"], "tiny")
    assert store.identity["doc_ids_sha256"] == corpus.identity["doc_ids_sha256"]
    # the router's term statistics, counted once at build time
    stored, counted = TermStats.from_corpus(store), TermStats.from_corpus(corpus)
    assert stored.num_documents == counted.num_documents == 3
    for word in ("japan", "the", "eiffel", "1889", "absent"):
        assert stored.df.get(word, 0) == counted.df.get(word, 0)
    assert stored.df.get("japan", 0) == 2
    assert require_documents(store, ["a1"])[0].title == "Eiffel Tower"
    with pytest.raises(ConfigError, match="1 document id.*'zz'"):
        require_documents(store, ["a1", "zz"])


def test_store_of_another_corpus_is_refused(corpus_file, tmp_path):
    store = build_docstore(corpus_file, tmp_path / "store", show_progress=False)
    other = {"kind": "bm25", "corpus": corpus_identity(["a1", "b2"], "other")}
    refused = "'other' \\(2 documents.*, but the corpus 'corpus.jsonl' \\(3 documents"
    with pytest.raises(CorpusMismatchError, match=refused):
        check_source(store, other, tmp_path / "idx")
    check_source(store, {"kind": "bm25", "corpus": corpus_identity(["a1", "b2", "é3"])}, "idx")
    check_source(store, {"kind": "bm25"}, "idx")  # a manifest from before identities: not a mismatch
    with pytest.raises(IndexCorruptError, match="expected a 'docstore'"):
        (tmp_path / "idx").mkdir()
        (tmp_path / "idx" / "sparsa.json").write_text(json.dumps({"kind": "bm25", "files": {}}))
        DocStore(tmp_path / "idx")


def test_interrupted_build_leaves_no_store(tmp_path):
    bad = write_corpus(tmp_path / "corpus.jsonl", [{"_id": f"d{i}", "text": "x"} for i in range(5000)])
    with bad.open("a") as f:
        f.write("{not json\n")
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:5001: invalid JSON"):
        build_docstore(bad, tmp_path / "store", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]  # no store, no build folder
    # and a published store survives a failed rebuild
    good = build_docstore(write_corpus(tmp_path / "good.jsonl"), tmp_path / "store", show_progress=False)
    with pytest.raises(DataFormatError):
        build_docstore(bad, tmp_path / "store", show_progress=False)
    assert len(DocStore(good.folder)) == 3
    dup = write_corpus(tmp_path / "dup.jsonl", [*DOCS, {"_id": "x", "text": "y"}, DOCS[1]])
    with pytest.raises(DataFormatError, match=r"dup.jsonl:5: duplicate document id 'a1' \(first on line 2\)"):
        build_docstore(dup, tmp_path / "dup", show_progress=False)
    with pytest.raises(DataFormatError, match="empty"):
        build_docstore(write_corpus(tmp_path / "empty.jsonl", []), tmp_path / "empty", show_progress=False)
    assert not (tmp_path / "dup").exists() and not (tmp_path / "empty").exists()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSA_HOME", str(tmp_path / "home"))
    load_settings.cache_clear()
    yield tmp_path / "home"
    monkeypatch.undo()
    load_settings.cache_clear()


def test_open_documents_builds_once_and_rebuilds_when_stale(corpus_file, home):
    assert type(open_documents(corpus_file)).__name__ == "Corpus"  # small: in memory, nothing written
    assert not (home / "docstores").exists()
    store = open_documents(corpus_file, store=True)  # built once...
    assert isinstance(store, DocStore) and store.folder == store_path(corpus_file)
    assert store.folder.parent == home / "docstores"
    built = read_manifest(store.folder)["built_at"], store.path.stat().st_mtime_ns
    again = open_documents(corpus_file)  # ...then found (an existing store is used whatever the size)
    assert isinstance(again, DocStore) and (read_manifest(again.folder)["built_at"],
                                            again.path.stat().st_mtime_ns) == built
    write_corpus(corpus_file, DOCS[:2])  # the corpus changed: the store is rebuilt
    os.utime(corpus_file, ns=(1, 1))
    assert len(open_documents(corpus_file)) == 2
    assert len(open_documents(store.folder)) == 2  # a store folder given as the dataset


def test_doc_store_cli(corpus_file, tmp_path, capsys):
    from sparsa.cli.main import main

    out = tmp_path / "docs"
    assert main(["-q", "doc-store", "--dataset", str(corpus_file), "--out", str(out)]) == 0
    assert "stored 3 documents" in capsys.readouterr().err
    assert main(["-q", "doc-store", "--dataset", str(corpus_file), "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().err
    assert main(["-q", "doc-store", "--dataset", str(tmp_path / "none.jsonl")]) == 2
    assert "dataset not found" in capsys.readouterr().err
