"""Many-topic labelled pairs for transfer fine-tuning of the relevance judge (issue 8), none from TREC DL 2019.

Writes the JSONL that ``sparsa train judge --pairs`` reads (``judge/train.py``: query, passage, grade
0-3, ids, title, source) and prints its counts per source and grade. Deterministic: every choice is drawn
from ``random.Random(--seed)`` over sorted inputs.

Sources in the shared data folder, and how their labels map onto the TREC DL scale (3 perfectly relevant:
answers the query; 2 highly relevant; 1 related, does not answer; 0 irrelevant):

- ``timeqa`` (human-annotated train + test, 577 Wikipedia pages, 2,160 time-scoped questions, each with
  the paragraph(s) holding its answer span): the answer paragraph -> 3; the answer paragraph of another
  question on the same page (same entity and relation, another time span: on topic, does not answer this
  question) -> 1; another paragraph of the same page (same entity, unrelated content) -> 0; a paragraph
  of another page -> 0. The in-page negatives are the hard ones: they teach "answers", not "same topic".
- ``scifact`` (train + test qrels, 1,109 claims): an abstract the claim cites -> 2 (it addresses the claim,
  but BEIR's qrels also list cited abstracts without evidence, so not 3); an uncited abstract drawn from
  BM25 ranks ``HARD_RANKS`` of the claim -> 0 (ranks below the top few: fewer unjudged relevant ones); a
  random abstract -> 0.
- ``cranfield`` (225 queries, graded qrels 0-4 from the original codes -1, 4..1): complete answer (4) -> 3,
  high relevance (3) -> 2, useful background (2) and minimal interest (1) -> 1, no interest (0) -> 0; plus
  unjudged abstracts from BM25 ranks ``HARD_RANKS`` -> 0.

Left out: ``hotpotqa-dev-qa`` holds questions and answers only (no paragraphs: its SOURCE.md says the
distractor file was not reachable); ``cisi`` (binary, broad judgements of multi-sentence information needs);
``realtimeqa`` (news articles longer than the judge's 192 passage tokens; search hits are unjudged);
``llmjudge-2024`` (labels without passage text).

    .venv/bin/python bench/judge_transfer_data.py --out .stage/judge_transfer.jsonl.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))
from sparsa.config import load_settings
from sparsa.data import load_corpus, read_qrels, read_queries
from sparsa.judge.train import LabelledPair, describe_pairs, write_labelled_pairs
from sparsa.types import Document, Query

ROOT = Path(__file__).resolve().parent.parent
HARD_RANKS = (5, 30)  # BM25 ranks [5, 30) of a query: lexically close, past the likeliest unjudged relevant ones
MIN_WORDS = 20  # shorter TimeQA paragraphs are headings, list items and infobox lines
CRANFIELD_GRADES = {4: 3, 3: 2, 2: 1, 1: 1, 0: 0}


def detokenize(text: str) -> str:
    """TimeQA's space-separated punctuation ("Baker , who ( 1916 )") back to ordinary text."""
    text = re.sub(r" ([,.;:!?%)\]])", r"\1", text)
    text = re.sub(r"([(\[]) ", r"\1", text)
    return re.sub(r" (n't|'s|'re|'ve|'ll|'d)\b", r"\1", text)


def timeqa_paragraph(split: str, page: dict, i: int) -> Document:
    """Paragraph ``i`` of a page, titled with the page's first paragraph (its title): paragraphs refer to
    their subject as "he" or "the company"."""
    title = detokenize(page["paras"][0]) if i else ""  # an answer can sit in the title paragraph itself
    return Document(f"timeqa:{split}:{page['index']}:p{i}", detokenize(page["paras"][i]), title, {"source": "timeqa"})


def timeqa_pairs(folder: Path, rng: random.Random) -> list[LabelledPair]:
    """Per question: its answer paragraph(s) (3, at most two), one other question's answer paragraph (1),
    one other paragraph of the page (0), one paragraph of another page (0)."""
    pages = []
    for split in ("train", "test"):
        with gzip.open(folder / f"human_annotated_{split}.json.gz", "rt", encoding="utf-8") as f:
            pages += [(split, page) for page in json.load(f)]
    long = [[i for i, t in enumerate(page["paras"]) if len(t.split()) >= MIN_WORDS] for _, page in pages]
    pairs = []
    for position, (split, page) in enumerate(pages):
        answers = [sorted({a["para"] for a in answer}) for _, answer in page["questions"]]
        every_answer = {i for paras in answers for i in paras}
        for number, ((question, _), paras) in enumerate(zip(page["questions"], answers, strict=True)):
            query = Query(f"timeqa:{split}:{page['index']}:q{number}", detokenize(question))
            labelled = [(i, 3) for i in paras[:2]]
            siblings = sorted(every_answer - set(paras))
            labelled += [(rng.choice(siblings), 1)] if siblings else []
            others = [i for i in long[position] if i not in every_answer]
            labelled += [(rng.choice(others), 0)] if others else []
            pairs += [LabelledPair(query, timeqa_paragraph(split, page, i), g) for i, g in labelled]
            other = rng.randrange(len(pages))
            while pages[other][1]["index"] == page["index"] or not long[other]:
                other = rng.randrange(len(pages))
            pairs.append(LabelledPair(query, timeqa_paragraph(*pages[other], rng.choice(long[other])), 0))
    return pairs


def bm25_ranking(queries: Sequence[str], docs: Sequence[str], depth: int, k1: float = 0.9,
                 b: float = 0.4) -> np.ndarray:
    """``int64[len(queries), depth]``: each query's top ``depth`` document positions by BM25 (lowercased
    alphanumeric tokens, Lucene-style idf); only for drawing hard negatives."""
    from scipy.sparse import csr_matrix

    vocab: dict[str, int] = {}

    def counts(texts: Sequence[str]) -> csr_matrix:
        rows, cols = [], []
        for row, text in enumerate(texts):
            for token in re.findall(r"[a-z0-9]+", text.lower()):
                rows.append(row)
                cols.append(vocab.setdefault(token, len(vocab)))
        return csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(texts), 1 << 22))

    tf = counts(docs)
    df = np.bincount(tf.indices, minlength=tf.shape[1])
    idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
    length = np.asarray(tf.sum(1)).ravel()
    norm = k1 * (1 - b + b * length / length.mean())
    weights = tf.copy()
    weights.data = weights.data * (k1 + 1) / (weights.data + np.repeat(norm, np.diff(tf.indptr))) * idf[tf.indices]
    q = counts(queries)
    q.data[:] = 1.0
    scores = (q @ weights.T).toarray()
    return np.argsort(-scores, axis=1, kind="stable")[:, :depth]


def beir(folder: Path, qrels_files: Sequence[str]) -> tuple[dict[str, str], list[Document], dict[str, dict[str, int]]]:
    """Queries, corpus (file order) and the qrels of ``qrels_files`` merged, of a BEIR-layout folder."""
    queries = {q.id: q.text for q in read_queries(folder / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    for name in qrels_files:
        for qid, judged in read_qrels(folder / "qrels" / name).items():
            qrels.setdefault(qid, {}).update(judged)
    return queries, load_corpus(folder).documents, qrels


def collection_pairs(source: str, folder: Path, qrels_files: Sequence[str], grade_map: dict[int, int],
                     hard: int, random_negatives: int, rng: random.Random) -> list[LabelledPair]:
    """Every judged pair (grades through ``grade_map``), then per query ``hard`` unjudged documents from BM25
    ranks ``HARD_RANKS`` and ``random_negatives`` random unjudged ones, all graded 0."""
    queries, corpus, qrels = beir(folder, qrels_files)
    corpus = [d for d in corpus if d.text.strip()]  # Cranfield has a few empty abstracts
    by_id = {d.id: d for d in corpus}
    qids = sorted(qrels, key=lambda q: (len(q), q))
    top = bm25_ranking([queries[q] for q in qids], [d.full_text for d in corpus], HARD_RANKS[1])
    pairs = []
    for row, qid in enumerate(qids):
        query, judged = Query(f"{source}:{qid}", queries[qid]), qrels[qid]
        labelled = [(by_id[d], grade_map[g]) for d, g in sorted(judged.items()) if d in by_id]
        close = [corpus[i] for i in top[row, HARD_RANKS[0]:] if corpus[i].id not in judged]
        labelled += [(d, 0) for d in rng.sample(close, min(hard, len(close)))]
        for _ in range(random_negatives):
            doc = rng.choice(corpus)
            while doc.id in judged:
                doc = rng.choice(corpus)
            labelled.append((doc, 0))
        pairs += [LabelledPair(query, Document(f"{source}:{d.id}", d.text, d.title, {"source": source}), g)
                  for d, g in labelled]
    return pairs


def build(data_dir: Path, seed: int) -> list[LabelledPair]:
    rng = random.Random(seed)
    pairs = timeqa_pairs(data_dir / "timeqa", rng)
    pairs += collection_pairs("scifact", data_dir / "scifact", ("train.tsv", "test.tsv"), {1: 2}, 1, 1, rng)
    pairs += collection_pairs("cranfield", data_dir / "cranfield", ("test.tsv",), CRANFIELD_GRADES, 2, 0, rng)
    rng.shuffle(pairs)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".stage" / "judge_transfer.jsonl.gz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pairs = build(load_settings().data_dir, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_labelled_pairs(pairs, args.out)
    summary = describe_pairs(pairs)
    print(f"{summary['pairs']} pairs, {summary['queries']} queries -> {args.out}")
    print(f"{'source':<10} {'pairs':>6} " + " ".join(f"{'grade ' + str(g):>8}" for g in range(4)))
    for source, entry in summary["sources"].items():
        print(f"{source:<10} {entry['pairs']:>6} " + " ".join(f"{entry['grades'].get(g, 0):>8}" for g in range(4)))
    print(f"{'all':<10} {summary['pairs']:>6} " + " ".join(f"{summary['grades'].get(g, 0):>8}" for g in range(4)))


if __name__ == "__main__":
    main()
