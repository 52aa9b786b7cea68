"""Lucene BM25 through Pyserini: build, search, atomic replacement, kill -9, corruption."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparsa.errors import ConfigError, IndexCorruptError
from sparsa.eval import evaluate_run
from sparsa.indexes import build_index, open_index
from sparsa.types import Corpus, Document, Query
from tests.conftest import needs_java

pytestmark = pytest.mark.java


@pytest.fixture(scope="module")
def cranfield_index(tmp_path_factory, cranfield):
    needs_java()
    out = tmp_path_factory.mktemp("idx") / "cranfield"
    build_index("bm25", cranfield.corpus, out, show_progress=False)
    return out


def test_build_search_and_evaluate(cranfield_index, cranfield):
    index = open_index(cranfield_index)
    assert index.num_documents == 1400
    hits = index.search_text("boundary layer heat transfer", k=5)
    assert len(hits) == 5 and hits[0].score >= hits[-1].score
    run = index.search(cranfield.queries, k=100, show_progress=False)
    assert len(run) == len(cranfield.queries)
    assert evaluate_run(run, cranfield.qrels).aggregate["nDCG@10"] > 0.3
    with pytest.raises(ConfigError, match="k must be >= 1"):
        index.search(cranfield.queries[:1], k=0)


def test_search_parameters_come_from_the_manifest_and_can_be_overridden(cranfield_index):
    from sparsa.indexes.lucene import LuceneBM25Index

    manifest = json.loads((cranfield_index / "sparsa.json").read_text())
    assert (manifest["kind"] == "bm25" and manifest["config"]["k1"] == 0.9
            and manifest["num_documents"] == 1400)
    tuned = LuceneBM25Index.open(cranfield_index, k1=1.2, b=0.75)
    assert tuned.config.k1 == 1.2
    with pytest.raises(ConfigError, match="0 <= b <= 1"):
        LuceneBM25Index.open(cranfield_index, b=2.0)


def test_rebuild_replaces_the_index_atomically(tmp_path):
    needs_java()
    out = tmp_path / "small"
    build_index("bm25", Corpus([Document("a", "apple pie recipe")]), out, show_progress=False)
    build_index("bm25", Corpus([Document("b", "banana bread"), Document("c", "cherry jam")]), out,
                show_progress=False)
    index = open_index(out)
    assert index.num_documents == 2
    assert [h.doc_id for h in index.search([Query("q", "banana")], k=5)["q"]] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]  # no work folders left


def test_refuses_to_overwrite_a_folder_that_is_not_an_index(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(IndexCorruptError, match="not a sparsa index"):
        build_index("bm25", Corpus([Document("a", "x")]), tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


KILLED_BUILD = """
import sys
from sparsa.data import load_dataset
from sparsa.indexes import build_index
from sparsa.types import Corpus, Document
docs = load_dataset(sys.argv[1]).corpus.documents
big = Corpus(Document(f"{copy}-{d.id}", d.text, d.title) for copy in range(6) for d in docs)
build_index("bm25", big, sys.argv[2], show_progress=False)
"""


def test_killed_build_leaves_previous_index_serving(shared_data, tmp_path):
    needs_java()
    out = tmp_path / "serving"
    build_index("bm25", _tiny_corpus(), out, show_progress=False)
    before = [h.doc_id for h in open_index(out).search_text("wing", k=3)]

    child = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(shared_data / "scifact"), str(out)])
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".serving.building*/lucene/*")):
        time.sleep(0.05)
    time.sleep(0.5)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL

    index = open_index(out)
    assert index.num_documents == 3
    assert [h.doc_id for h in index.search_text("wing", k=3)] == before
    assert list(tmp_path.glob(".serving.building*"))  # the dead build's folder is still there...
    build_index("bm25", _tiny_corpus(), out, show_progress=False)
    assert not list(tmp_path.glob(".serving.building*"))  # ...until the next build cleans it up


def _tiny_corpus() -> Corpus:
    return Corpus([Document("w1", "wing flutter at high speed"), Document("w2", "swept wing lift"),
                   Document("w3", "heat transfer in a boundary layer")])


def test_corrupted_index_is_refused(tmp_path):
    needs_java()
    out = tmp_path / "corrupt"
    build_index("bm25", _tiny_corpus(), out, show_progress=False)
    victim = max((p for p in (out / "lucene").iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    with pytest.raises(IndexCorruptError, match="wrong size; rebuild it"):
        open_index(out)
    (out / "sparsa.json").write_text("{not json")
    with pytest.raises(IndexCorruptError, match="unreadable manifest"):
        open_index(out)


def test_checksum_verification_catches_same_size_damage(tmp_path):
    needs_java()
    out = tmp_path / "flipped"
    build_index("bm25", _tiny_corpus(), out, show_progress=False)
    victim = next(p for p in sorted((out / "lucene").iterdir()) if p.is_file() and p.stat().st_size > 16)
    data = bytearray(victim.read_bytes())
    data[8] ^= 0xFF  # inside Lucene's codec header: the size check cannot see it
    victim.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="fails its checksum"):
        open_index(out, verify="sha256")
    with pytest.raises(IndexCorruptError, match="Lucene could not open"):  # never a raw Java exception
        open_index(out)


def test_paths_are_reported(tmp_path):
    with pytest.raises(IndexCorruptError, match=str(Path(tmp_path) / "none")):
        open_index(tmp_path / "none")
