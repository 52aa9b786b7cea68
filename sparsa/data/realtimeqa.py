"""RealTime QA (Kasai et al., 2023): dated weekly news questions, dated news articles, gold evidence.

Reads the folder laid out in ``shared/data/realtimeqa`` (see its SOURCE.md):

- ``questions_all_weeks.jsonl.gz``: one question per line (``question_id``, ``question_date``,
  ``question_sentence``, ``choices``, ``answer``, ``evidence`` (quiz HTML with links), ``_source_file``);
- ``gold_evidence_*.jsonl.gz``: per question, the gold news article(s) ``{url, text, publish_date}``;
- ``gcs_search_results_*.jsonl.gz``: per question, the organisers' web-search hits
  ``{url, title, text, publish_date}``.

Every article seen in gold or search files joins one dated pool, keyed by its normalised URL. A
question's gold articles are those of the gold files plus the pool articles its quiz evidence links
to (the quiz cites the news story it was written from), so 2022-2023 weeks without gold files still
get labels where the cited story was fetched. The query time of a question is ``question_date``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from sparsa.data.beir import json_records
from sparsa.errors import DataFormatError
from sparsa.types import Document

logger = logging.getLogger(__name__)

QUESTIONS_FILE = "questions_all_weeks.jsonl.gz"
_HREF = re.compile(r'href="([^"]+)"')
_WEEK = re.compile(r"(\d{8})_\w+\.jsonl")


@dataclass(frozen=True, slots=True)
class RealtimeQuestion:
    """One quiz question, asked on ``date``; ``week`` is the weekly file's date (``YYYYMMDD``)."""

    id: str
    text: str
    date: dt.date
    week: str
    choices: tuple[str, ...]
    answers: tuple[str, ...]
    evidence_urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Article:
    """One news article of the pool; ``id`` is its normalised URL; ``date`` None when undated."""

    id: str
    url: str
    title: str
    text: str
    date: dt.date | None

    def to_document(self) -> Document:
        return Document(self.id, self.text, self.title,
                        {"date": self.date.isoformat() if self.date else None})


@dataclass(slots=True)
class RealtimeQA:
    """Questions in date order, the article pool by id, and gold article ids per question id."""

    questions: list[RealtimeQuestion]
    articles: dict[str, Article]
    gold: dict[str, set[str]] = field(default_factory=dict)

    def labelled(self) -> list[RealtimeQuestion]:
        """Questions with at least one gold article in the pool."""
        return [q for q in self.questions if self.gold.get(q.id)]


def normalize_url(url: str) -> str:
    """``https://www.x.com/a/?q=1#f`` -> ``x.com/a``: the same story under small URL variations."""
    url = url.strip().lower()
    url = re.sub(r"^https?://", "", url)
    url = re.sub(r"^www\.", "", url)
    return url.split("#")[0].split("?")[0].rstrip("/")


def parse_date(value: str, path: Path, line: int) -> dt.date:
    """``YYYY/MM/DD`` or ``YYYY-MM-DD`` (both occur) -> date."""
    try:
        return dt.date.fromisoformat(value.strip()[:10].replace("/", "-"))
    except (ValueError, AttributeError):
        raise DataFormatError(path, f"bad date {value!r} (expected YYYY/MM/DD)", line) from None


def _string(record: dict, name: str, path: Path, line: int) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(path, f"missing or empty string field {name!r}", line)
    return value


def _week(record: dict, fallback: dt.date) -> str:
    match = _WEEK.search(str(record.get("_source_file", "")))
    return match.group(1) if match else fallback.strftime("%Y%m%d")


def read_questions(path: str | Path) -> list[RealtimeQuestion]:
    """Questions sorted by date then id. A reused id with a different question gets a ``~N`` suffix."""
    path = Path(path)
    by_id: dict[str, RealtimeQuestion] = {}
    skipped = 0
    for number, record in json_records(path):
        qid = _string(record, "question_id", path, number)
        if record.get("question_sentence") == "":
            skipped += 1  # blank placeholder rows occur in the source (e.g. 20201009_10)
            continue
        text = _string(record, "question_sentence", path, number).strip()
        date = parse_date(_string(record, "question_date", path, number), path, number)
        choices = record.get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise DataFormatError(path, "field 'choices' must be a list of strings", number)
        answer = record.get("answer")
        indices = [answer] if isinstance(answer, str) else answer
        if (not isinstance(indices, list)
                or not all(str(i).isdigit() and int(i) < len(choices) for i in indices)):
            raise DataFormatError(path, f"field 'answer' must index 'choices', got {answer!r}", number)
        evidence = record.get("evidence") or ""
        urls = tuple(dict.fromkeys(normalize_url(u) for u in _HREF.findall(str(evidence))))
        question = RealtimeQuestion(qid, text, date, _week(record, date), tuple(choices),
                                    tuple(choices[int(i)] for i in indices), urls)
        if qid in by_id and by_id[qid].text == text:
            continue  # the same question listed twice in one weekly file
        suffix = 1
        while question.id in by_id:
            suffix += 1
            question = replace(question, id=f"{qid}~{suffix}")
        by_id[question.id] = question
    if not by_id:
        raise DataFormatError(path, "no questions")
    if skipped:
        logger.info("%s: skipped %d blank question rows", path.name, skipped)
    return sorted(by_id.values(), key=lambda q: (q.date, q.id))


def read_article_hits(path: str | Path) -> Iterator[tuple[str, Article]]:
    """``(question_id, article)`` for every hit of a gold or search-results file (undated hits kept)."""
    path = Path(path)
    for number, record in json_records(path):
        qid = _string(record, "question_id", path, number)
        hits = record.get("search_result")
        if not isinstance(hits, list):
            raise DataFormatError(path, "field 'search_result' must be a list of articles", number)
        for hit in hits:
            if not isinstance(hit, dict) or not isinstance(hit.get("url"), str) or not hit["url"].strip():
                raise DataFormatError(path, "every search_result entry needs a 'url' string", number)
            text = hit.get("text")
            if text is None:
                continue  # the page could not be fetched: nothing to retrieve
            if not isinstance(text, str):
                raise DataFormatError(path, "article 'text' must be a string", number)
            raw_date = hit.get("publish_date")
            date = parse_date(raw_date, path, number) if raw_date else None
            title = hit.get("title") if isinstance(hit.get("title"), str) else ""
            yield qid, Article(normalize_url(hit["url"]), hit["url"], title.strip(), text.strip(), date)


def _merge(old: Article, new: Article) -> Article:
    """One article fetched twice: the latest date (never let a story look older than it is), longest text."""
    dates = [d for d in (old.date, new.date) if d is not None]
    return Article(old.id, old.url, old.title or new.title, max(old.text, new.text, key=len),
                   max(dates) if dates else None)


def load_realtimeqa(folder: str | Path) -> RealtimeQA:
    """Questions, the article pool (gold + search hits) and gold article ids per question."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(folder, "RealTime QA folder not found")
    questions = read_questions(folder / QUESTIONS_FILE)
    articles: dict[str, Article] = {}
    gold: dict[str, set[str]] = {}
    for path in (sorted(folder.glob("gold_evidence_*.jsonl*"))
                 + sorted(folder.glob("gcs_search_results_*.jsonl*"))):
        is_gold = path.name.startswith("gold_evidence_")
        for qid, article in read_article_hits(path):
            articles[article.id] = (_merge(articles[article.id], article)
                                    if article.id in articles else article)
            if is_gold:
                gold.setdefault(qid, set()).add(article.id)
    for question in questions:
        cited = {url for url in question.evidence_urls if url in articles}
        if cited:
            gold.setdefault(question.id, set()).update(cited)
    known = {q.id for q in questions}
    gold = {qid: ids for qid, ids in gold.items() if ids and qid in known}
    return RealtimeQA(questions, articles, gold)


def write_dated_dataset(data: RealtimeQA, out: str | Path, last_train_week: str,
                        last_test_date: dt.date | None = None) -> dict[str, int]:
    """RealTime QA as a dated dataset (``sparsa.retrieval.dated``'s BEIR layout), the pool and split
    the event bench uses: ``corpus.jsonl`` holds every dated pool article (date, then id order;
    ``metadata.date``), ``queries.jsonl`` every question with a gold article (``date``), and
    ``qrels/train.tsv`` / ``qrels/test.tsv`` their gold articles (grade 1) for weeks up to
    ``last_train_week`` and for the later weeks up to ``last_test_date``. Written to a temporary folder
    renamed into place; an existing ``out`` is an error. Returns the counts written."""
    import json
    import os
    import shutil

    from sparsa.errors import ConfigError
    from sparsa.retrieval.event_data import split_by_week

    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} exists: give a new folder")
    articles = sorted((a for a in data.articles.values() if a.date is not None), key=lambda a: (a.date, a.id))
    questions = data.labelled()
    splits = dict(zip(("train", "test"), split_by_week(questions, last_train_week, last_test_date),
                      strict=True))
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    (work / "qrels").mkdir(parents=True)
    with (work / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for a in articles:
            f.write(json.dumps({"_id": a.id, "title": a.title, "text": a.text,
                                "metadata": {"date": a.date.isoformat()}}, ensure_ascii=False) + "\n")
    with (work / "queries.jsonl").open("w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps({"_id": q.id, "text": q.text, "date": q.date.isoformat()},
                               ensure_ascii=False) + "\n")
    for split, positions in splits.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{questions[i].id}\t{doc}\t1" for i in positions
                                                    for doc in sorted(data.gold[questions[i].id])]
        (work / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(work, out)
    return {"documents": len(articles), "queries": len(questions),
            **{f"{split}_queries": len(positions) for split, positions in splits.items()}}
