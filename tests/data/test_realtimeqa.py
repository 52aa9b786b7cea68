"""RealTime QA: the real folder loads (questions, dated pool, gold); malformed rows name file and line."""

from __future__ import annotations

import datetime as dt
import gzip
import json

import pytest

from sparsa.data.realtimeqa import load_realtimeqa, normalize_url, read_article_hits, read_questions
from sparsa.errors import DataFormatError

QUESTION = {"question_id": "20220617_0", "question_date": "2022/06/16", "question_sentence": "Who won?",
            "choices": ["A", "B"], "answer": ["1"], "evidence": '<a href="https://www.cnn.com/x/?s=1">x</a>',
            "_source_file": "past/2022/20220617_qa.jsonl"}


@pytest.fixture(scope="module")
def realtimeqa(shared_data):
    return load_realtimeqa(shared_data / "realtimeqa")


def test_real_folder(realtimeqa):
    # 7,863 rows - 10 listed twice - 1 blank row; one reused id gets a suffix
    assert len(realtimeqa.questions) == 7852
    assert any(q.id == "20230414_20~2" for q in realtimeqa.questions)
    dates = [q.date for q in realtimeqa.questions]
    assert dates == sorted(dates)
    assert len(realtimeqa.articles) > 11000 and all(a.text or a.title for a in realtimeqa.articles.values())
    labelled = realtimeqa.labelled()
    assert len(labelled) > 300  # 220 from gold files, the rest from links in the quiz evidence
    first = next(q for q in labelled if q.id == "20220617_0")
    (gold,) = realtimeqa.gold[first.id]
    assert (realtimeqa.articles[gold].date == dt.date(2022, 6, 12)
            and "Squid Game" in realtimeqa.articles[gold].text)
    assert first.answers[0] in first.choices


def test_normalize_url():
    assert normalize_url("https://www.CNN.com/a/b/?x=1#top") == "cnn.com/a/b"


def _write(path, rows):
    with gzip.open(path, "wt") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row))
            f.write("\n")
    return path


@pytest.mark.parametrize("broken, message", [
    ({"question_date": "16 June 2022"}, "bad date"),
    ({"answer": ["7"]}, "must index 'choices'"),
    ({"choices": "A, B"}, "list of strings"),
    ({"question_id": None}, "question_id"),
])
def test_malformed_question_rows(tmp_path, broken, message):
    path = _write(tmp_path / "q.jsonl.gz", [QUESTION, {**QUESTION, "question_id": "x", **broken}])
    with pytest.raises(DataFormatError, match=rf"q.jsonl.gz:2: .*{message}"):
        read_questions(path)


def test_bad_json_and_bad_hits(tmp_path):
    with pytest.raises(DataFormatError, match=r"q.jsonl.gz:2: invalid JSON"):
        read_questions(_write(tmp_path / "q.jsonl.gz", [QUESTION, "{not json"]))
    hits = _write(tmp_path / "gcs.jsonl.gz",
                  [{"question_id": "a",
                    "search_result": [{"url": "u", "text": "t", "publish_date": "2022/13/01"}]}])
    with pytest.raises(DataFormatError, match=r"gcs.jsonl.gz:1: bad date"):
        list(read_article_hits(hits))
    no_url = _write(tmp_path / "gold.jsonl.gz", [{"question_id": "a", "search_result": [{"text": "t"}]}])
    with pytest.raises(DataFormatError, match=r"gold.jsonl.gz:1: .*'url'"):
        list(read_article_hits(no_url))


def test_small_folder_links_gold(tmp_path):
    _write(tmp_path / "questions_all_weeks.jsonl.gz", [QUESTION])
    _write(tmp_path / "gcs_search_results_2022.jsonl.gz", [{"question_id": "20220617_0", "search_result": [
        {"url": "http://cnn.com/x", "title": "X", "text": "story", "publish_date": "2022/06/12"},
        {"url": "http://cnn.com/x", "title": "", "text": "longer story", "publish_date": "2022/06/13"},
        {"url": "http://cnn.com/y", "title": "Y", "text": None, "publish_date": None}]}])
    data = load_realtimeqa(tmp_path)
    assert data.gold == {"20220617_0": {"cnn.com/x"}}  # cited in the evidence; the failed fetch is dropped
    article = data.articles["cnn.com/x"]
    assert (article.title, article.text, article.date) == ("X", "longer story", dt.date(2022, 6, 13))
    with pytest.raises(DataFormatError, match="not found"):
        load_realtimeqa(tmp_path / "missing")
