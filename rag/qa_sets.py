"""The mixed question set for retrieve-or-recall routing, read from ``shared/data``.

Questions that need the corpus, each with its passages:
- RealTimeQA (``realtimeqa/`` through ``sparsa.data.realtimeqa``): questions with a gold article;
  passages are ~120-word chunks of every labelled question's gold articles plus 2,000 other articles
  of the dated pool; the gold answer is the text of the correct choice (asked free-form, no choices);
- TimeQA human-annotated test (``timeqa/``): the Wikipedia paragraphs of every test page;
- MetaQA 1-hop test (``metaqa/``): the WikiMovies KB as text, one passage per head entity listing
  its triples ("Kismet. directed by: William Dieterle. starred actors: ...").

Questions a small LM may know, with no passages of their own: PopQA long-tail rows with the highest
``s_pop`` (``popqa-longtail/``) and NQ-open dev (``nq-open/``).

Sampling is seeded and stable; each source contributes ``per_source`` questions.

A user's own labelled set is JSONL (:func:`read_labelled_questions`); :class:`AnswerCache` keeps the
reader's answers to a set on disk so that a long run resumes (``sparsa train router --cache``).
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import random
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sparsa.data.beir import json_records
from sparsa.errors import DataFormatError
from sparsa.types import Document

SOURCES = ("realtimeqa", "timeqa", "metaqa", "popqa", "nq")
NEEDS_CORPUS = ("realtimeqa", "timeqa", "metaqa")
CHUNK_WORDS = 120
RTQA_DISTRACTORS = 2000  # other articles of the dated pool, beside every labelled question's gold articles


@dataclass(frozen=True, slots=True)
class QAExample:
    id: str
    source: str
    question: str
    answers: tuple[str, ...]

    @property
    def split(self) -> str:
        """``dev`` or ``test``, a stable half of each source decided by a hash of the id."""
        return "dev" if int(hashlib.sha1(self.id.encode()).hexdigest(), 16) % 2 == 0 else "test"


def _jsonl(path: Path) -> Iterator[dict]:
    return (record for _, record in json_records(path))


def read_labelled_questions(path: str | Path) -> list[QAExample]:
    """A labelled question set for ``sparsa train router``: JSONL (``.gz`` by suffix), one object a line
    with ``question`` (a string) and ``answers`` (a list of strings, or one string), optionally ``id``
    (default ``q<line>``) and ``source`` (default ``file``). Bad lines name the file and line."""
    examples, seen = [], set()
    for number, record in json_records(path):
        question, answers = record.get("question"), record.get("answers")
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(question, str) or not question.strip():
            raise DataFormatError(path, "expected a non-empty string field 'question'", number)
        if not isinstance(answers, list) or not answers or \
                not all(isinstance(a, str) and a.strip() for a in answers):
            raise DataFormatError(path, "expected 'answers': a non-empty list of strings", number)
        qid = str(record.get("id", f"q{number}"))
        if qid in seen:
            raise DataFormatError(path, f"duplicate id {qid!r}", number)
        seen.add(qid)
        examples.append(QAExample(qid, str(record.get("source", "file")), question.strip(), tuple(answers)))
    if not examples:
        raise DataFormatError(path, "no questions")
    return examples


def _sample(items: list, n: int, seed: int) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n]


def _chunks(doc_id: str, title: str, text: str) -> list[Document]:
    words = text.split()
    return [Document(f"{doc_id}-{i // CHUNK_WORDS}", " ".join(words[i : i + CHUNK_WORDS]), title)
            for i in range(0, len(words), CHUNK_WORDS)]


def _listed(value: str | list) -> list:
    """Some files store lists as Python reprs inside JSON strings."""
    return ast.literal_eval(value) if isinstance(value, str) else value


def realtimeqa(data: Path, n: int, seed: int = 0) -> tuple[list[QAExample], list[Document]]:
    from sparsa.data.realtimeqa import load_realtimeqa

    rtqa = load_realtimeqa(data / "realtimeqa")
    labelled = rtqa.labelled()
    chosen = _sample([QAExample(f"rtqa-{q.id}", "realtimeqa", q.text, q.answers) for q in labelled], n, seed)
    gold = sorted({a for q in labelled for a in rtqa.gold[q.id]})
    others = _sample(sorted(set(rtqa.articles) - set(gold)), RTQA_DISTRACTORS, seed)
    docs = [d for i, article_id in enumerate(gold + others)
            for d in _chunks(f"rtqa-{i}", rtqa.articles[article_id].title.strip(),
                             rtqa.articles[article_id].text)]
    return chosen, docs


def timeqa(data: Path, n: int, seed: int = 0) -> tuple[list[QAExample], list[Document]]:
    path = data / "timeqa" / "human_annotated_test.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        pages = json.load(f)
    examples, docs = [], []
    for p, page in enumerate(pages):
        paras = _listed(page["paras"])
        title = paras[0] if paras else page["link"].rsplit("/", 1)[-1]
        docs += [Document(f"tqa-{p}-{i}", text, title) for i, text in enumerate(paras[1:], 1) if text.strip()]
        for j, (question, spans) in enumerate(_listed(page["questions"])):
            answers = tuple(dict.fromkeys(s["answer"].strip() for s in spans if s.get("answer", "").strip()))
            if answers:
                examples.append(QAExample(f"tqa-{p}-{j}", "timeqa", question.strip(), answers))
    return _sample(examples, n, seed), docs


def metaqa(data: Path, n: int, seed: int = 0) -> tuple[list[QAExample], list[Document]]:
    folder = data / "metaqa"
    examples = []
    with gzip.open(folder / "1-hop" / "vanilla" / "qa_test.txt.gz", "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            question, sep, answers = line.rstrip("\n").partition("\t")
            if not sep:
                raise DataFormatError(folder / "1-hop/vanilla/qa_test.txt.gz",
                                      "expected 'question<TAB>answers'", number)
            examples.append(QAExample(f"mqa-{number}", "metaqa", question, tuple(answers.split("|"))))
    by_head: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    with gzip.open(folder / "kb_reconstructed.txt.gz", "rt", encoding="utf-8") as f:
        for line in f:
            head, relation, tail = line.rstrip("\n").split("|")
            by_head[head][relation].append(tail)
    docs = [Document(f"mqa-kb-{i}", " ".join(f"{rel.replace('_', ' ')}: {', '.join(tails)}."
                                             for rel, tails in sorted(rels.items())), head)
            for i, (head, rels) in enumerate(sorted(by_head.items()))]
    return _sample(examples, n, seed), docs


def popqa(data: Path, n: int, seed: int = 0) -> tuple[list[QAExample], list[Document]]:
    rows = sorted(_jsonl(data / "popqa-longtail" / "popqa_longtail.jsonl"),
                  key=lambda r: (-r["s_pop"], r["id"]))
    return [QAExample(f"popqa-{r['id']}", "popqa", r["question"], tuple(r["possible_answers"]))
            for r in rows[:n]], []


def nq_open(data: Path, n: int, seed: int = 0) -> tuple[list[QAExample], list[Document]]:
    rows = list(_jsonl(data / "nq-open" / "NQ-open.dev.jsonl"))
    examples = [QAExample(f"nq-{i}", "nq", r["question"], tuple(r["answer"])) for i, r in enumerate(rows)]
    return _sample(examples, n, seed), []


LOADERS = {"realtimeqa": realtimeqa, "timeqa": timeqa, "metaqa": metaqa, "popqa": popqa, "nq": nq_open}


def interleave_sources(examples: list[QAExample]) -> list[QAExample]:
    """Round-robin over sources (each source's order kept), so a partial run covers every source evenly."""
    rank: dict[str, int] = {}
    keyed = []
    for e in examples:
        rank[e.source] = rank.get(e.source, 0) + 1
        keyed.append((rank[e.source], e.source, e))
    return [e for *_, e in sorted(keyed, key=lambda t: t[:2])]


def mixed_question_set(data: str | Path, per_source: int = 80,
                       seed: int = 0) -> tuple[list[QAExample], list[Document]]:
    """All sources' sampled questions and the union of their passages (one corpus, one index)."""
    examples, docs = [], []
    for source in SOURCES:
        found, passages = LOADERS[source](Path(data), per_source, seed)
        examples += found
        docs += passages
    return examples, docs


class AnswerCache:
    """Reader outputs on disk (JSONL, appended batch by batch: a killed run keeps its work), keyed by the
    reader (``model_key``), the settings that change a generation, the route's prompt, the question and
    the passage ids, so readers and settings never mix."""

    def __init__(self, path: str | Path, model_key: str, config):
        from sparsa.rag import reader as prompts  # the prompt of each route is part of its key
        from sparsa.rag.config import ATTENTION_PRESETS

        self.path, self.model_key, self.config = Path(path), str(model_key), config
        c, attention = config, config.resolved().attention
        # A preset's name says it all (keys written before presets had [] for its settings).
        named = attention.name in ATTENTION_PRESETS
        self.settings = [self.model_key, c.max_context_tokens, c.max_passage_tokens, c.max_new_tokens,
                         attention.name, c.device, c.dtype,
                         [] if named else sorted(map(list, attention.kernel_settings().items()))]
        self.tags = {"recall": json.dumps([self.settings, prompts.RECALL_SYSTEM, prompts.RECALL_EXAMPLE]),
                     "retrieve": json.dumps([self.settings, prompts.READ_SYSTEM, prompts.READ_EXAMPLE])}
        self.entries: dict[str, dict] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            for _, entry in json_records(self.path):
                self.entries[entry["key"]] = entry

    def key(self, question: str, passage_ids: Sequence[str]) -> str:
        tag = self.tags["retrieve" if passage_ids else "recall"]
        return hashlib.sha1(json.dumps([tag, question, list(passage_ids)]).encode()).hexdigest()

    def get(self, question: str, passage_ids: Sequence[str]) -> dict | None:
        return self.entries.get(self.key(question, passage_ids))

    def fill(self, reader, items: Sequence[tuple[str, Sequence[Document]]], batch_size: int = 1,
             log=None) -> int:
        """Generate the missing ``(question, passages)`` answers ``batch_size`` at a time; returns how
        many."""
        missing = list({self.key(q, [d.id for d in p]): (q, p) for q, p in items
                        if self.get(q, [d.id for d in p]) is None}.items())
        started, chunk = time.perf_counter(), max(batch_size, 1) * 8  # appended to disk chunk by chunk
        for begin in range(0, len(missing), chunk):
            part = missing[begin: begin + chunk]
            outputs = reader.answer_batch([item for _, item in part], batch_size=batch_size)
            with self.path.open("a") as f:
                for (key, (question, passages)), out in zip(part, outputs, strict=True):
                    entry = {"key": key, "settings": self.settings, "question": question,
                             **output_entry(out), "retrieved": [d.id for d in passages]}
                    f.write(json.dumps(entry) + "\n")
                    self.entries[key] = entry
            if log is not None:
                log(f"generated {begin + len(part)}/{len(missing)} in {time.perf_counter() - started:.1f} s")
        return len(missing)

    def settings_present(self) -> list[str]:
        """The settings of the cached entries (older entries carry none), for error messages."""
        return sorted({json.dumps(e.get("settings", "?")) for e in self.entries.values()})


def output_entry(out) -> dict:
    """A :class:`sparsa.rag.reader.ReaderOutput` as the JSON an :class:`AnswerCache` keeps."""
    return {"text": out.text, "raw": out.raw, "citations": out.citations, "passages": out.passages,
            "mean_logprob": out.mean_logprob, "timings": out.timings, "prompt_tokens": out.prompt_tokens,
            "new_tokens": out.new_tokens}
