"""Training examples for encoders: labelled pairs with mined hard negatives, and self-supervised
pairs from the corpus itself (a document's title as the query for its body).

Hard negatives come from a first-stage run (e.g. BM25): the highest-ranked documents that are not
judged relevant. Only the split's qrels are used, so test judgements never reach training.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from sparsa.errors import DataFormatError
from sparsa.retrieval.splade_train import TrainingExample
from sparsa.types import Corpus, Qrels, Query, Run


def _negatives(hits_doc_ids: Sequence[str], exclude: set[str], count: int, corpus: Corpus,
               rng: random.Random, skip_top: int = 0) -> list[str]:
    mined = [d for d in hits_doc_ids[skip_top:] if d not in exclude][:count]
    while len(mined) < count:  # too few candidates: fill with random documents
        doc_id = rng.choice(corpus.documents).id
        if doc_id not in exclude and doc_id not in mined:
            mined.append(doc_id)
    return [corpus[d].full_text for d in mined]


def labelled_examples(queries: Sequence[Query], qrels: Qrels, corpus: Corpus, first_stage: Run,
                      negatives: int = 4, seed: int = 13) -> list[TrainingExample]:
    """One example per (query, relevant document), negatives from the query's first-stage hits."""
    rng = random.Random(seed)
    examples = []
    for q in queries:
        relevant = {d for d, grade in qrels.get(q.id, {}).items() if grade > 0}
        ranked = [h.doc_id for h in first_stage.get(q.id, [])]
        for doc_id in sorted(relevant):
            negs = _negatives(ranked, relevant, negatives, corpus, rng)
            examples.append(TrainingExample(q.text, corpus[doc_id].full_text, tuple(negs)))
    return examples


def title_body_examples(corpus: Corpus, title_run: Run | None = None, negatives: int = 4,
                        limit: int | None = None, seed: int = 13) -> list[TrainingExample]:
    """Self-supervised pairs: query = a document's title, positive = its body.

    ``title_run`` (titles searched as queries, ids = doc ids) supplies hard negatives; the top few
    hits are skipped since near-duplicates of the source document often rank there.
    """
    rng = random.Random(seed)
    docs = [d for d in corpus.documents if d.title.strip() and d.text.strip()]
    rng.shuffle(docs)
    examples = []
    for doc in docs[:limit]:
        ranked = [h.doc_id for h in title_run.get(doc.id, [])] if title_run else []
        negs = _negatives(ranked, {doc.id}, negatives, corpus, rng, skip_top=2)
        examples.append(TrainingExample(doc.title, doc.text, tuple(negs)))
    return examples


def write_examples(examples: Sequence[TrainingExample], path: str | Path) -> None:
    """JSONL (gzip by suffix): the interchange format for training on another machine."""
    from sparsa.data.trec import write_jsonl

    write_jsonl((asdict(e) for e in examples), path)


def read_examples(path: str | Path) -> list[TrainingExample]:
    from sparsa.data.trec import numbered_lines

    examples = []
    for number, line in numbered_lines(path):
        try:
            record = json.loads(line)
            examples.append(TrainingExample(record["query"], record["positive"],
                                            tuple(record.get("negatives", ())),
                                            tuple(record["teacher_scores"]) if record.get("teacher_scores")
                                            else None))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataFormatError(path, f"not a training example ({exc})", number) from None
    return examples
