"""Training the event-aware head end to end on a slice of the real RealTime QA rows (real minilm-l6)."""

from __future__ import annotations

import gzip
import json

import pytest

from sparsa.cli.main import main
from sparsa.data.realtimeqa import load_realtimeqa
from sparsa.retrieval.event_encoder import EventQueryEncoder


@pytest.fixture(scope="module")
def small_folder(shared_data, tmp_path_factory):
    """Twelve labelled questions (six train, six test weeks, Sept-Oct 2022), their gold articles and
    40 other articles."""
    data = load_realtimeqa(shared_data / "realtimeqa")
    weeks = ("20220916", "20220923", "20221007", "20221014")
    questions = [q for q in data.labelled() if q.week in weeks[:2]][:6] + \
        [q for q in data.labelled() if q.week in weeks[2:]][:6]
    gold_ids = sorted({g for q in questions for g in data.gold[q.id]})
    others = [a.id for a in data.articles.values()
              if a.date and "2022-09" <= a.date.isoformat() <= "2022-10-14"]
    folder = tmp_path_factory.mktemp("rtqa")
    with gzip.open(folder / "questions_all_weeks.jsonl.gz", "wt") as f:
        for q in questions:
            f.write(json.dumps({"question_id": q.id, "question_date": q.date.strftime("%Y/%m/%d"),
                                "question_sentence": q.text, "choices": list(q.choices), "answer": ["0"],
                                "evidence": "", "_source_file": f"past/2022/{q.week}_qa.jsonl"}) + "\n")
    with gzip.open(folder / "gold_evidence_2022.jsonl.gz", "wt") as f:
        for q in questions:
            hits = [{"url": "https://" + g, "text": data.articles[g].text, "title": data.articles[g].title,
                     "publish_date": data.articles[g].date.strftime("%Y/%m/%d")}
                    for g in sorted(data.gold[q.id])]
            f.write(json.dumps({"question_id": q.id, "search_result": hits}) + "\n")
    with gzip.open(folder / "gcs_search_results_2022.jsonl.gz", "wt") as f:
        hits = [{"url": "https://" + a, "title": data.articles[a].title, "text": data.articles[a].text[:2000],
                 "publish_date": data.articles[a].date.strftime("%Y/%m/%d")} for a in others[:40]]
        f.write(json.dumps({"question_id": questions[0].id, "search_result": hits}) + "\n")
    return folder, len(gold_ids)


@pytest.mark.slow
def test_train_event_cli_saves_a_loadable_encoder(small_folder, tmp_path, capsys):
    folder, _ = small_folder
    out = tmp_path / "event-head"
    argv = ["train", "event", "--data", str(folder), "--out", str(out), "--last-train-week", "20220923",
            "--epochs", "3", "--max-events", "8", "--cache", str(tmp_path / "cache")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "recall@5" in err and "saved" in err
    encoder = EventQueryEncoder.load(out)
    record = json.loads((out / "sparsa.json").read_text())["training"]
    assert record["examples"] >= 2 and record["test_questions"] >= 1 and 0 <= record["test"]["R@5"] <= 1
    assert encoder.config.max_events == 8 and encoder.config.use_events
    assert list((tmp_path / "cache").glob("documents-*.npy"))  # embeddings cached for the next run
    assert main([*argv[:-2], "--cache", str(tmp_path / "cache"), "--last-train-week", "2022"]) == 2
    assert "expected YYYYMMDD" in capsys.readouterr().err
