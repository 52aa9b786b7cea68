from __future__ import annotations

import numpy as np
import pytest

from sparsa.types import Document, Hit, Qrels, Run, SparseVector


def test_sparse_vector_roundtrip_dot_and_top_k():
    a = SparseVector.from_dict({5: 1.0, 2: 3.0, 9: 0.5})
    b = SparseVector.from_dict({2: 2.0, 9: 4.0, 11: 1.0})
    assert a.indices.tolist() == [2, 5, 9]
    assert a.indices.dtype == np.int32 and a.values.dtype == np.float32
    assert a.to_dict() == {2: 3.0, 5: 1.0, 9: 0.5}
    assert a.dot(b) == pytest.approx(3.0 * 2.0 + 0.5 * 4.0)
    assert a.top_k(2).to_dict() == {2: 3.0, 5: 1.0}
    assert a.top_k(10) is a
    dense = np.zeros(12, dtype=np.float32)
    dense[[2, 5, 9]] = [3.0, 1.0, 0.5]
    assert SparseVector.from_dense(dense).to_dict() == a.to_dict()


def test_sparse_vector_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="equal length"):
        SparseVector(np.array([1, 2], dtype=np.int32), np.array([1.0], dtype=np.float32))


def test_run_sorts_hits_and_roundtrips_trec(tmp_path):
    run = Run({"q1": [Hit("d1", 1.0), Hit("d2", 3.0), Hit("d0", 1.0)]}, name="bm25")
    assert [h.doc_id for h in run["q1"]] == ["d2", "d0", "d1"]  # ties broken by doc id
    path = tmp_path / "run.trec"
    run.write_trec(path)
    assert path.read_text().splitlines()[0] == "q1 Q0 d2 1 3.000000 bm25"
    back = Run.read_trec(path)
    assert back.name == "bm25" and back["q1"] == run["q1"]


def test_qrels_roundtrip(tmp_path):
    qrels = Qrels({"q1": {"d1": 2, "d2": 0}})
    qrels.write_trec(tmp_path / "q.txt")
    assert Qrels.read_trec(tmp_path / "q.txt") == qrels
    assert qrels.num_judgements == 2


def test_document_full_text_joins_title():
    assert Document("1", "body", "Title").full_text == "Title body"
    assert Document("1", "body").full_text == "body"
