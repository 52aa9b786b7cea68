"""The real benchmark folders load, and malformed files fail with file and line."""

from __future__ import annotations

import gzip
import json

import pytest

from sparsa.data import load_corpus, load_dataset, read_queries
from sparsa.errors import DataFormatError

EXPECTED = {  # name: (documents, judged test queries, judgements)
    "scifact": (5183, 300, 339),
    "cranfield": (1400, 225, 1837),
    "cisi": (1460, 76, 3114),
    "trec-dl-2019-passage": (10818, 43, 9260),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_datasets_load(shared_data, name):
    data = load_dataset(shared_data / name)
    docs, queries, judgements = EXPECTED[name]
    assert (len(data.corpus), len(data.queries), data.qrels.num_judgements) == (docs, queries, judgements)
    assert all(q.id in data.qrels for q in data.queries)


def test_scifact_train_split(shared_data):
    train = load_dataset(shared_data / "scifact", split="train")
    assert len(train.queries) == 809


def test_dataset_by_name_under_the_data_dir(shared_data):
    by_name = load_dataset("cisi")
    assert by_name.path == shared_data / "cisi"
    assert len(by_name.corpus) == EXPECTED["cisi"][0]


def write_dataset(folder, corpus_lines, queries=None, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\n"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n")
    (folder / "queries.jsonl").write_text(queries or json.dumps({"_id": "q1", "text": "a question"}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text(qrels)
    return folder


GOOD = json.dumps({"_id": "d1", "title": "T", "text": "some text"})


def test_a_custom_beir_folder_loads(tmp_path):
    data = load_dataset(write_dataset(tmp_path / "mine", [GOOD]))
    assert data.corpus["d1"].full_text == "T some text"
    assert [q.id for q in data.queries] == ["q1"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([GOOD, '{"_id": "d2", "text": '], r"corpus.jsonl:2: invalid JSON"),
        ([GOOD, json.dumps({"_id": "d2", "body": "x"})], r"corpus.jsonl:2: missing text field"),
        ([json.dumps({"text": "x"})], r"corpus.jsonl:1: missing id field"),
        ([GOOD, GOOD], r"corpus.jsonl:2: duplicate document id 'd1'"),
        (["[1, 2]"], r"corpus.jsonl:1: expected a JSON object"),
        ([""], r"corpus.jsonl: the corpus is empty"),
    ],
)
def test_malformed_corpus_names_file_and_line(tmp_path, lines, message):
    with pytest.raises(DataFormatError, match=message):
        load_dataset(write_dataset(tmp_path / "bad", lines))


def test_unknown_document_in_qrels_names_the_line(tmp_path):
    folder = write_dataset(tmp_path / "bad", [GOOD],
                           qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tnope\t1\n")
    with pytest.raises(DataFormatError, match=r"test.tsv:3: document 'nope' is not in the corpus"):
        load_dataset(folder)


def test_bad_qrels_grade_and_columns(tmp_path):
    with pytest.raises(DataFormatError, match=r"test.tsv:2: grade 'high' is not a number"):
        load_dataset(write_dataset(tmp_path / "a", [GOOD],
                                   qrels="query-id\tcorpus-id\tscore\nq1\td1\thigh\n"))
    with pytest.raises(DataFormatError, match=r"test.tsv:1: expected 'qid docid grade'"):
        load_dataset(write_dataset(tmp_path / "b", [GOOD], qrels="q1 d1\n"))


def test_invalid_utf8_and_missing_files(tmp_path):
    bad = tmp_path / "corpus.jsonl.gz"
    with gzip.open(bad, "wb") as f:
        f.write(GOOD.encode() + b"\n" + b'{"_id": "d2", "text": "\xff\xfe"}\n')
    with pytest.raises(DataFormatError, match=r"corpus.jsonl.gz:2: not valid UTF-8"):
        load_corpus(bad)
    with pytest.raises(DataFormatError, match="dataset not found"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no corpus file found"):
        load_dataset(tmp_path / "empty")


def test_tsv_queries(tmp_path):
    path = tmp_path / "queries.tsv"
    path.write_text("1\tfirst query\n2\tsecond\n")
    assert [q.text for q in read_queries(path)] == ["first query", "second"]
    path.write_text("1 no tab here\n")
    with pytest.raises(DataFormatError, match=r"queries.tsv:1: expected 'qid<TAB>text'"):
        read_queries(path)


def test_a_labelled_questions_file_reads_as_queries_under_train_routers_ids(tmp_path):
    """'sparsa search --queries' on 'sparsa train router --questions' files: the ids the router looks up
    in a --run (its own 'id', else q<line>, as read_labelled_questions numbers them)."""
    from sparsa.rag.qa_sets import read_labelled_questions

    path = tmp_path / "qa.jsonl"
    path.write_text('{"id": "a7", "question": " who directed Kismet? ", "answers": ["x"]}\n'
                    '{"question": "when was it made?", "answers": ["y"], "source": "nq"}\n'
                    '{"id": 3, "question": "who starred?", "answers": "z"}\n')
    assert [(q.id, q.text) for q in read_queries(path)] == [
        ("a7", "who directed Kismet?"), ("q2", "when was it made?"), ("3", "who starred?")]
    assert [q.id for q in read_queries(path)] == [e.id for e in read_labelled_questions(path)]
    path.write_text('{"question": "", "answers": ["x"]}\n')
    with pytest.raises(DataFormatError, match=r"qa.jsonl:1: the query text is empty"):
        read_queries(path)


@pytest.mark.parametrize(("name", "lines"), [
    ("queries.jsonl", '{"_id": "1", "text": "fine"}\n{"_id": "2", "text": "  "}\n'),
    ("queries.tsv", "1\tfine\n2\t \n"),
])
def test_an_empty_query_text_names_file_and_line(tmp_path, name, lines):
    """JSONL and TSV follow one rule (the CLI's --query too): an empty text is an error,
    not a 0-score query."""
    path = tmp_path / name
    path.write_text(lines)
    with pytest.raises(DataFormatError, match=rf"{name}:2: the query text is empty \(query '2'\)"):
        read_queries(path)


def test_bad_json_names_the_column_once(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "1", "text": "unterminated}\n')
    with pytest.raises(DataFormatError) as error:
        read_queries(path)
    assert str(error.value) == f"{path}:1: invalid JSON: Unterminated string starting at column 22"
