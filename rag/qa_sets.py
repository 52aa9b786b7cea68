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
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataFormatError(path, f"not JSON ({exc.msg})", number) from None
    except FileNotFoundError:
        raise DataFormatError(path, "file not found") from None


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
            for d in _chunks(f"rtqa-{i}", rtqa.articles[article_id].title.strip(), rtqa.articles[article_id].text)]
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
                raise DataFormatError(folder / "1-hop/vanilla/qa_test.txt.gz", "expected 'question<TAB>answers'", number)
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
    rows = sorted(_jsonl(data / "popqa-longtail" / "popqa_longtail.jsonl"), key=lambda r: (-r["s_pop"], r["id"]))
    return [QAExample(f"popqa-{r['id']}", "popqa", r["question"], tuple(r["possible_answers"])) for r in rows[:n]], []


def nq_open(data: Path, n: int, seed: int = 0) -> tuple[list[QAExample], list[Document]]:
    rows = list(_jsonl(data / "nq-open" / "NQ-open.dev.jsonl"))
    examples = [QAExample(f"nq-{i}", "nq", r["question"], tuple(r["answer"])) for i, r in enumerate(rows)]
    return _sample(examples, n, seed), []


LOADERS = {"realtimeqa": realtimeqa, "timeqa": timeqa, "metaqa": metaqa, "popqa": popqa, "nq": nq_open}


def mixed_question_set(data: str | Path, per_source: int = 80, seed: int = 0) -> tuple[list[QAExample], list[Document]]:
    """All sources' sampled questions and the union of their passages (one corpus, one index)."""
    examples, docs = [], []
    for source in SOURCES:
        found, passages = LOADERS[source](Path(data), per_source, seed)
        examples += found
        docs += passages
    return examples, docs
