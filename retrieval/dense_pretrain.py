"""Self-supervised query/passage pairs from a corpus alone (Chang et al. 2020, "Pre-training Tasks for
Embedding-based Large-scale Retrieval"), plus labelled pairs from a training split's qrels.

- **ICT**, Inverse Cloze Task: the query is one sentence of a passage, the positive is the passage
  with that sentence removed (kept in a fraction ``keep_rate`` of pairs, so the encoder still learns
  some lexical matching, as in Lee et al. 2019).
- **BFS**, Body First Selection: the query is a sentence from the document's first section, the
  positive another passage of the same document. Corpora of abstracts (SciFact) have one passage
  per document, so the query is the first sentence and the positive the document's other sentences.
- **WLP**, Wiki Link Prediction: the query is a sentence of one page, the positive a passage of a page
  it links to. sparsa corpora carry titles but no links, so WLP here uses a document's title as the
  anchor text pointing at its body (title -> passage); documents without a title give no pair.
- ``mix``: the three tasks over disjoint shuffled shares of the corpus (one pair per document).

Every pair keeps its source ``doc_id``, so the trainer never treats a pair's own document as an
in-batch negative. Pairs travel as JSONL(.gz), to train on another machine.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sparsa.errors import ConfigError, DataFormatError
from sparsa.types import Corpus, Document, Qrels, Query

TASKS = ("ict", "bfs", "wlp", "mix")
# A sentence ends at . ! or ? followed by space and an upper-case letter, digit or bracket.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


@dataclass(frozen=True, slots=True)
class Pair:
    query: str
    passage: str
    doc_id: str
    task: str


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def _with_title(doc: Document, body: str) -> str:
    return f"{doc.title} {body}".strip() if doc.title else body


def ict_pair(doc: Document, rng: random.Random, keep_rate: float = 0.1) -> Pair | None:
    """One sentence against the rest of its passage (the sentence kept with probability ``keep_rate``)."""
    sentences = split_sentences(doc.text)
    if len(sentences) < 2:
        return None
    i = rng.randrange(len(sentences))
    rest = sentences if rng.random() < keep_rate else sentences[:i] + sentences[i + 1 :]
    return Pair(sentences[i], _with_title(doc, " ".join(rest)), doc.id, "ict")


def bfs_pair(doc: Document, rng: random.Random, first_section: int = 1) -> Pair | None:
    """A sentence from the first ``first_section`` sentences against a span of the document's other sentences.

    With one passage per document the "other passage" is a contiguous span of the later sentences
    (at least half of them), so the query never appears in it.
    """
    sentences = split_sentences(doc.text)
    if len(sentences) < first_section + 1:
        return None
    query = sentences[rng.randrange(first_section)]
    later = sentences[first_section:]
    length = rng.randint((len(later) + 1) // 2, len(later))
    start = rng.randint(0, len(later) - length)
    return Pair(query, " ".join(later[start : start + length]), doc.id, "bfs")


def wlp_pair(doc: Document, rng: random.Random) -> Pair | None:
    """Title as anchor text -> the body it names (the corpus has no hyperlinks)."""
    if not doc.title.strip() or not doc.text.strip():
        return None
    return Pair(doc.title.strip(), doc.text.strip(), doc.id, "wlp")


_MAKERS = {"ict": ict_pair, "bfs": bfs_pair, "wlp": wlp_pair}


def pretraining_pairs(corpus: Corpus, task: str, limit: int | None = None, seed: int = 13,
                      keep_rate: float = 0.1) -> list[Pair]:
    """Up to ``limit`` pairs of ``task`` (ict, bfs, wlp or mix), at most one per document, shuffled."""
    if task not in TASKS:
        raise ConfigError(f"unknown pre-training task {task!r}; known: {', '.join(TASKS)}")
    rng = random.Random(seed)
    docs = list(corpus.documents)
    rng.shuffle(docs)
    pairs = []
    for number, doc in enumerate(docs):
        name = task if task != "mix" else ("ict", "bfs", "wlp")[number % 3]
        pair = ict_pair(doc, rng, keep_rate) if name == "ict" else _MAKERS[name](doc, rng)
        if pair is not None:
            pairs.append(pair)
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise ConfigError(f"the corpus gives no {task} pairs (documents need titles or several sentences)")
    return pairs


def labelled_pairs(queries: Sequence[Query], qrels: Qrels, corpus: Corpus) -> list[Pair]:
    """One pair per (query, relevant document) of a training split's qrels."""
    pairs = []
    for q in queries:
        for doc_id, grade in sorted(qrels.get(q.id, {}).items()):
            if grade > 0 and doc_id in corpus:
                pairs.append(Pair(q.text, corpus[doc_id].full_text, doc_id, "labelled"))
    return pairs


def write_pairs(pairs: Sequence[Pair], path: str | Path) -> None:
    from sparsa.data.trec import write_jsonl

    write_jsonl((asdict(p) for p in pairs), path)


def read_pairs(path: str | Path) -> list[Pair]:
    from sparsa.data.trec import numbered_lines

    pairs = []
    for number, line in numbered_lines(path):
        try:
            record = json.loads(line)
            pairs.append(Pair(record["query"], record["passage"], str(record["doc_id"]),
                              record.get("task", "")))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataFormatError(path, f"not a query/passage pair ({exc})", number) from None
    return pairs
