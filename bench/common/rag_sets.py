"""The question sets ``bench_rag.py`` builds (CPU, Java: BM25 over the mixed set's passages) and reads back:
the routing set (``routing --step set``: questions, their BM25 top-k passages and features, one JSON file)
and the latency set (``latency --set-only``: questions with their passages and retrieval seconds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

from sparsa.search import Retriever
from sparsa.types import Corpus, Document, Query

SET_FORMAT = "sparsa-routing-set/1"


def mixed_set(args: argparse.Namespace) -> tuple[list, Corpus, Retriever]:
    """The mixed question set, its passages and their BM25 index (``WORK/mixed-bm25``, rebuilt when the
    passages change)."""
    from sparsa.indexes import build_index
    from sparsa.rag.qa_sets import mixed_question_set
    from sparsa.search import open_retriever

    examples, docs = mixed_question_set(args.data, args.per_source, args.seed)
    index, stamp = args.work / "mixed-bm25", args.work / "mixed" / "fingerprint"
    fingerprint = hashlib.sha1("\n".join(d.id for d in docs).encode()).hexdigest()
    if not stamp.exists() or stamp.read_text() != fingerprint:
        shutil.rmtree(index, ignore_errors=True)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)
    if not (index / "sparsa.json").exists():
        build_index("bm25", Corpus(docs), index, threads=1)
    return examples, Corpus(docs), open_retriever(index)


def build_set(args: argparse.Namespace) -> dict:
    """Questions with their top-k BM25 passages and corpus features, as one JSON-ready dict."""
    from sparsa.rag.qa_sets import NEEDS_CORPUS, interleave_sources
    from sparsa.rag.routing import CONFIDENCE_DEPTH, TermStats, question_features

    examples, corpus, index = mixed_set(args)
    stats = TermStats.from_corpus(corpus)
    hits = index.search([Query(e.id, e.question) for e in examples], k=max(args.k, CONFIDENCE_DEPTH))
    questions, passages = [], {}
    for e in interleave_sources(examples):
        ids = [h.doc_id for h in hits[e.id][: args.k]]
        features = question_features(e.question, stats, scores=[h.score for h in hits[e.id]])
        features.pop("lm_logprob")  # the reader's, added by the report from the cache
        questions.append({"id": e.id, "source": e.source, "split": e.split, "question": e.question,
                          "answers": list(e.answers), "passages": ids, "features": features})
        passages.update({i: {"title": corpus[i].title, "text": corpus[i].text} for i in ids})
    setup = {"per_source": args.per_source, "seed": args.seed, "k": args.k, "corpus_passages": len(corpus),
             "index": "Lucene BM25 (k1 0.9, b 0.4) over the union of the corpus-needing sources "
                      f"{list(NEEDS_CORPUS)}"}
    return {"format": SET_FORMAT, "setup": setup, "questions": questions, "passages": passages}


def read_set(path: Path) -> dict:
    qset = json.loads(Path(path).read_text())
    if qset.get("format") != SET_FORMAT:
        raise SystemExit(f"{path}: not a routing set ({SET_FORMAT}); write one with 'routing --step set'")
    return qset


def set_passages(qset: dict, question: dict) -> list[Document]:
    found = qset["passages"]
    return [Document(i, found[i]["text"], found[i]["title"]) for i in question["passages"]]


def latency_set(args: argparse.Namespace) -> list[dict]:
    """Questions of the mixed set with their BM25 top-k passages (also saved for the GPU run)."""
    examples, corpus, index = mixed_set(args)
    chosen = examples[:: max(len(examples) // args.questions, 1)][: args.questions]
    items = []
    for e in chosen:  # one query at a time, timed
        started = time.perf_counter()
        hits = index.search([Query(e.id, e.question)], k=args.k)[e.id]
        items.append({"question": e.question, "retrieve_seconds": time.perf_counter() - started,
                      "passages": [{"id": h.doc_id, "text": corpus[h.doc_id].text,
                                    "title": corpus[h.doc_id].title} for h in hits]})
    (args.work / "latency_set.json").write_text(json.dumps(items))
    return items
