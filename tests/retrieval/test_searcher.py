"""Learned-sparse retrieval end to end: CLI index --kind splade, search with the index's encoder."""

from __future__ import annotations

import json

import pytest

from sparsa.cli.main import main
from sparsa.errors import ConfigError
from sparsa.indexes import open_index
from sparsa.models import resolve_model
from sparsa.registry import build_encoder
from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder
from sparsa.search import EncodedRetriever, open_retriever

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, cranfield):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    docs = cranfield.corpus.documents[:300]
    path.write_text("".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs))
    return path


def test_cli_splade_index_search_and_backends(tmp_path, small_corpus, capsys):
    index = tmp_path / "splade"
    assert main(["-q", "index", "--corpus", str(small_corpus), "--kind", "splade", "--out", str(index),
                 "--backend", "exact", "--backend", "seismic", "--device", "cpu"]) == 0
    manifest = json.loads((index / "sparsa.json").read_text())
    assert manifest["encoder"]["name"] == "splade" and manifest["num_documents"] == 300
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--query", "wing slipstream lift", "--k", "3"]) == 0
    assert "rank" in capsys.readouterr().err
    for backend in ("exact", "seismic"):
        run = tmp_path / f"{backend}.trec"
        queries = tmp_path / "q.tsv"
        queries.write_text("a\twing in a propeller slipstream\nb\theat transfer boundary layer\n")
        assert main(["-q", "search", "--index", str(index), "--queries", str(queries), "--backend", backend,
                     "--k", "5", "--out", str(run)]) == 0
        assert len(run.read_text().splitlines()) == 10
    assert main(["search", "--index", str(index), "--query", "x", "--backend", "lucene-impact"]) == 2
    assert "has no 'lucene-impact' backend" in capsys.readouterr().err
    assert (main(["index", "--corpus", str(small_corpus), "--kind", "colbert", "--out", str(tmp_path / "d")])
            == 2)
    assert "colbert" in capsys.readouterr().err


def test_retriever_uses_the_index_encoder_and_refuses_a_mismatch(tmp_path, small_corpus):
    index_dir = tmp_path / "idx"
    assert main(["-q", "index", "--corpus", str(small_corpus), "--kind", "splade", "--out", str(index_dir),
                 "--device", "cpu"]) == 0
    index = open_index(index_dir)
    retriever = open_retriever(index_dir, device="cpu")
    assert isinstance(retriever, EncodedRetriever)
    rebuilt = build_encoder(index.encoder_spec, device="cpu")
    assert isinstance(rebuilt, SpladeEncoder) and rebuilt.config.model == "splade-tiny"
    with pytest.raises(ConfigError, match="does not match the index's document encoder"):
        # The same weights under another name still count as another encoder: names are compared.
        EncodedRetriever(SpladeEncoder(SpladeConfig(model=resolve_model("splade-tiny"), device="cpu")), index)
