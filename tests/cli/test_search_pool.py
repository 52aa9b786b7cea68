"""``sparsa search --pool`` (rank each query's judged documents only) and ``--k1 / --b`` (Lucene BM25
parameters at search time): the runs of bench_judge's ten systems, on Cranfield through the CLI."""

from __future__ import annotations

import pytest

from sparsa.cli.main import main
from sparsa.data import load_dataset
from sparsa.eval.pool import judged_pool_run
from sparsa.types import Qrels, Run
from tests.conftest import needs_java

pytestmark = pytest.mark.java


@pytest.fixture(scope="module")
def cran(shared_data, tmp_path_factory):
    """(BM25 index, 3-query TSV, their qrels file with one judged id BM25 cannot return, the qrels)."""
    needs_java()
    root = tmp_path_factory.mktemp("pool")
    index = root / "cran-bm25"
    assert main(["-q", "index", "--dataset", str(shared_data / "cranfield"), "--out", str(index)]) == 0
    data = load_dataset(shared_data / "cranfield")
    topics = [q for q in data.queries if q.id in data.qrels][:3]
    (root / "q.tsv").write_text("".join(f"{q.id}\t{q.text}\n" for q in topics))
    qrels = Qrels({q.id: {**data.qrels[q.id], "no-such-doc": 0} for q in topics})
    qrels.write_trec(root / "pool.qrels")
    return index, root / "q.tsv", root / "pool.qrels", qrels, topics


def test_search_pool_ranks_only_the_judged_documents(cran, tmp_path):
    from sparsa.search import open_retriever

    index, queries, pool, qrels, topics = cran
    out = tmp_path / "pool.trec"
    assert main(["-q", "search", "--index", str(index), "--queries", str(queries), "--pool", str(pool),
                 "--out", str(out)]) == 0
    run = Run.read_trec(out)
    expected = judged_pool_run(open_retriever(index).search(topics, k=1400), qrels)
    for q in topics:
        assert {h.doc_id for h in run[q.id]} == set(qrels[q.id])  # the whole pool, nothing else
        assert [h.doc_id for h in run[q.id]] == [h.doc_id for h in expected[q.id]]
        assert run[q.id][-1].doc_id == "no-such-doc"  # judged but never retrieved: last


def test_search_k1_b_set_lucene_bm25(cran, tmp_path, capsys):
    from sparsa.indexes.lucene import LuceneBM25Index

    index, queries, pool, _, topics = cran
    runs = {}
    for k1, b in (("0.9", "0.4"), ("3.0", "1.0")):
        out = tmp_path / f"{k1}-{b}.trec"
        assert main(["-q", "search", "--index", str(index), "--queries", str(queries), "--k", "20",
                     "--k1", k1, "--b", b, "--out", str(out)]) == 0
        runs[k1] = Run.read_trec(out)
        library = LuceneBM25Index.open(index, k1=float(k1), b=float(b)).search(topics, k=20)
        for q in topics:
            assert [h.doc_id for h in runs[k1][q.id]] == [h.doc_id for h in library[q.id]]
    assert any([h.doc_id for h in runs["0.9"][q.id]] != [h.doc_id for h in runs["3.0"][q.id]] for q in topics)
    capsys.readouterr()
    assert main(["-q", "search", "--index", str(index), "--query", "wing", "--b", "1.5"]) == 2
    assert "0 <= b <= 1" in capsys.readouterr().err
    assert main(["-q", "search", "--index", str(index), "--query", "wing", "--pool", str(pool)]) == 2
    assert "--pool ranks the judged documents" in capsys.readouterr().err
