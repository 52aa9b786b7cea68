"""Event-aware retrieval through the CLI on a small dated dataset in the documented format: RealTime QA's
January-March 2022 questions with their gold articles and the other articles of those months (and a few
April ones), written as a BEIR folder (corpus ``metadata.date``, queries ``date``, qrels train/test).
``sparsa train event --dataset`` trains on it, ``sparsa index`` builds a minilm-l6 index, and ``sparsa
search --as-of / --event-encoder`` searches it; real models, no mocks."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from sparsa.cli.main import main
from sparsa.types import Run

END = dt.date(2022, 4, 1)


def write_dated_dataset(shared_data: Path, folder: Path, others: int = 240, later: int = 20) -> Path:
    """A dated dataset from RealTime QA (see the module docstring); returns the folder."""
    from sparsa.data.realtimeqa import load_realtimeqa

    rtqa = load_realtimeqa(shared_data / "realtimeqa")
    questions = [q for q in rtqa.labelled() if q.date < END]
    gold = {g for q in questions for g in rtqa.gold[q.id]}
    pool = sorted((a for a in rtqa.articles.values() if a.date and a.id not in gold),
                  key=lambda a: (a.date, a.id))
    before = [a for a in pool if dt.date(2021, 12, 20) <= a.date < END][::3][:others]
    after = [a for a in pool if END <= a.date < dt.date(2022, 5, 1)][:later]
    articles = [rtqa.articles[g] for g in sorted(gold)] + before + after
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for a in articles:
            f.write(json.dumps({"_id": a.id, "title": a.title, "text": a.text[:1500],
                                "metadata": {"date": a.date.isoformat()}}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for q in questions:
            f.write(json.dumps({"_id": q.id, "text": q.text, "date": q.date.isoformat()}) + "\n")
    cut = int(len(questions) * 0.7)
    for split, part in (("train", questions[:cut]), ("test", questions[cut:])):
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q.id}\t{g}\t1" for q in part
                                                    for g in sorted(rtqa.gold[q.id])]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def dated(shared_data, tmp_path_factory):
    """(dataset folder, trained head, dense index, {doc id: day}, {query id: day})."""
    root = tmp_path_factory.mktemp("dated")
    folder = write_dated_dataset(shared_data, root / "news")
    head, index = root / "event-head", root / "news-dense"
    assert main(["-q", "train", "event", "--dataset", str(folder), "--out", str(head), "--epochs", "3",
                 "--cache", str(root / "cache")]) == 0
    assert main(["-q", "index", "--dataset", str(folder), "--kind", "dense", "--out", str(index)]) == 0
    days = {}
    for line in (folder / "corpus.jsonl").read_text().splitlines():
        record = json.loads(line)
        days[record["_id"]] = record["metadata"]["date"]
    asked = {json.loads(line)["_id"]: json.loads(line)["date"]
             for line in (folder / "queries.jsonl").read_text().splitlines()}
    return folder, head, index, days, asked


def test_train_event_on_a_dated_dataset(dated):
    head = dated[1]
    manifest = json.loads((head / "sparsa.json").read_text())
    training = manifest["training"]
    assert manifest["kind"] == "event-query-encoder" and training["train_split"] == "train"
    assert training["examples"] >= 10 and training["test_questions"] >= 5
    assert 0.0 <= training["test"]["R@5"] <= 1.0 and len(training["loss_per_epoch"]) == 3


def test_search_as_of_keeps_only_documents_of_that_day_or_before(dated, tmp_path):
    folder, _, index, days, _ = dated
    run_file = tmp_path / "q.trec"
    assert main(["-q", "search", "--index", str(index), "--query", "prime minister resigned", "--k", "20",
                 "--as-of", "2022-01-07", "--corpus", str(folder), "--out", str(run_file)]) == 0
    hits = Run.read_trec(run_file)["q"]
    assert len(hits) == 20 and all(days[h.doc_id] <= "2022-01-07" for h in hits)
    plain = tmp_path / "plain.trec"
    assert main(["-q", "search", "--index", str(index), "--query", "prime minister resigned", "--k", "20",
                 "--out", str(plain)]) == 0
    assert any(days[h.doc_id] > "2022-01-07" for h in Run.read_trec(plain)["q"])  # the filter did work


def test_search_with_the_event_encoder_as_of_each_querys_day(dated, tmp_path):
    folder, head, index, days, asked = dated
    run_file = tmp_path / "event.trec"
    assert main(["-q", "search", "--index", str(index), "--dataset", str(folder), "--split", "test",
                 "--event-encoder", str(head), "--k", "10", "--out", str(run_file)]) == 0
    run = Run.read_trec(run_file)
    test_ids = {line.split("\t")[0] for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    assert set(run) == test_ids
    for qid, hits in run.items():  # no query sees a document published after it was asked
        assert len(hits) == 10 and all(days[h.doc_id] <= asked[qid] for h in hits)
    assert main(["-q", "eval", "--run", str(run_file), "--dataset", str(folder), "--split", "test",
                 "--measure", "R@10"]) == 0


def test_ask_with_the_event_encoder_as_of_a_day(dated, capsys):
    """'sparsa ask --event-encoder HEAD --as-of DAY': the passages are the event-aware search's top k as of
    that day (the question encoded as of it, nothing published later), read by the reader."""
    from sparsa.data import load_corpus
    from sparsa.retrieval.dated import EventAwareRetriever, search_as_of

    folder, head, index, days, _ = dated
    question = "Which prime minister resigned?"
    argv = ["-q", "ask", question, "--index", str(index), "--dataset", str(folder), "--event-encoder",
            str(head), "--as-of", "2022-01-07", "--mode", "retrieve", "--k", "3", "--max-new-tokens", "4",
            "--device", "cpu", "--json"]
    assert main(argv) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["route"] == "retrieve" and answer["passages"]
    assert all(days[h["doc_id"]] <= "2022-01-07" for h in answer["passages"])
    corpus = load_corpus(folder / "corpus.jsonl")
    expected = search_as_of(EventAwareRetriever.open(index, head, corpus), question, 3,
                            dt.date(2022, 1, 7), corpus, depth=100)
    scores = {h.doc_id: h.score for h in expected}  # the event-aware query's scores, not plain minilm's
    assert all(h["score"] == pytest.approx(scores[h["doc_id"]], abs=1e-4) for h in answer["passages"])
    two = ["-q", "ask", question, "--index", f"{index},{index}", "--dataset", str(folder), "--event-encoder",
           str(head)]
    assert main(two) == 2
    assert "one dense index" in capsys.readouterr().err


def test_dated_search_errors_are_clear(dated, capsys, tmp_path):
    folder, head, index, _, _ = dated
    undated = tmp_path / "undated"
    undated.mkdir()
    (undated / "corpus.jsonl").write_text('{"_id": "a", "text": "x"}\n')
    (undated / "queries.jsonl").write_text('{"_id": "q", "text": "y"}\n')
    cases = [
        (["search", "--index", str(index), "--query", "x", "--as-of", "2022-13-01", "--corpus", str(folder)],
         "--as-of '2022-13-01': expected a date YYYY-MM-DD"),
        (["search", "--index", str(index), "--query", "x", "--event-encoder", str(head)], "give --corpus"),
        (["search", "--index", str(index), "--query", "x", "--event-encoder", str(head), "--corpus",
          str(undated)], "the index holds"),
        (["train", "event", "--dataset", str(undated), "--out", str(tmp_path / "h")],
         "no document has a metadata.date"),
    ]
    for argv, message in cases:
        assert main(["-q", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def _in_window(day: str, asked: str, window_days: int) -> bool:
    return (dt.date.fromisoformat(asked) - dt.timedelta(days=window_days)).isoformat() <= day <= asked


@pytest.mark.parametrize("kind", ["dense", "event", "bm25"])
def test_search_window_days_ranks_inside_each_querys_window(dated, tmp_path, kind):
    """--window-days 14 (bench_event's date-filter rows): each query's hits are the best of the
    documents dated within 14 days before its day, in the unfiltered order."""
    from sparsa.search import open_retriever

    folder, head, index, days, asked = dated
    if kind == "bm25":
        from tests.conftest import needs_java

        needs_java()
        index = tmp_path / "bm25"
        assert main(["-q", "index", "--dataset", str(folder), "--kind", "bm25", "--out", str(index)]) == 0
    extra = ["--event-encoder", str(head)] if kind == "event" else []
    run_file = tmp_path / "window.trec"
    assert main(["-q", "search", "--index", str(index), "--dataset", str(folder), "--split", "test",
                 "--window-days", "14", "--k", "5", "--out", str(run_file), *extra]) == 0
    run = Run.read_trec(run_file)
    assert run and all(_in_window(days[h.doc_id], asked[qid], 14) for qid, hits in run.items() for h in hits)
    if kind == "event":
        return  # the head encodes as of each day: the unfiltered order below is the plain index's
    retriever = open_retriever(index)
    from sparsa.data import load_dataset

    topics = [q for q in load_dataset(folder, "test").queries if q.id in run]
    full = retriever.search(topics, k=len(days))
    for q in topics:
        expected = [h.doc_id for h in full[q.id] if _in_window(days[h.doc_id], asked[q.id], 14)][:5]
        assert [h.doc_id for h in run[q.id]] == expected


def test_dated_dataset_writes_realtimeqa_as_the_event_bench_splits_it(shared_data, tmp_path, capsys):
    from sparsa.data import load_dataset

    out = tmp_path / "rtqa"
    assert main(["-q", "dated-dataset", "--data", str(shared_data / "realtimeqa"), "--out", str(out)]) == 0
    test = load_dataset(out, "test")
    assert len(test.queries) == len(test.qrels) == 126  # bench_event's test weeks (after 20220930)
    assert all(doc.meta["date"] for doc in test.corpus.documents[:100])
    asked = {json.loads(line)["_id"]: json.loads(line)["date"] for line in (out / "queries.jsonl").open()}
    assert all("2022-10-01" <= asked[q] <= "2023-12-31" for q in test.qrels)
    assert len(load_dataset(out, "train").qrels) == 203
    assert main(["-q", "dated-dataset", "--data", str(shared_data / "realtimeqa"), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
