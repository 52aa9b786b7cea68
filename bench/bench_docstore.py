"""What the on-disk document store (``sparsa.docstore``, issue 25) saves and costs -> results/docstore.json.

Over RealTime QA's 89,099 dated news passages (``runs/longcontext/rtqa_corpus.jsonl.gz``, written by
``python bench/bench_rag_longcontext.py --stages prepare --dataset realtimeqa``) with a Lucene BM25 index:

- memory: each way of holding the passages in a fresh process (``--child``): ``load_pipeline`` with the
  corpus in memory (what ``ask`` and ``serve`` did before: ``load_corpus``, and the router's term
  statistics counted over it) and with the store (``open_documents`` on the store folder; the router
  reads the stored frequencies), a router file (``bench/results/rag_router.json``, which uses the
  corpus statistics and the LM's confidence), the SmolLM2-135M reader on the CPU, then one question
  through the router in mode auto. Recorded: resident memory (VmRSS) after each load step, peak RSS
  (``ru_maxrss``) after the question, and the load seconds;
- latency: the look-up of each question's hits (``fetch`` of 5, 100 and 1,000 ids: ``k``, the default
  date-filter depth and the example config's) from memory and from the store, over the test questions;
  and the router's term statistics per question (``question_features``) from each;
- build: seconds and size of the store (and of the BM25 index, for scale).

    python bench/bench_docstore.py                 # builds the index and store once under runs/docstore
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import write_results

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "runs" / "longcontext" / "rtqa_corpus.jsonl.gz"
QUESTIONS = ROOT / "runs" / "longcontext" / "rtqa_questions.json"
ROUTER = ROOT / "bench" / "results" / "rag_router.json"
WORK = ROOT / "runs" / "docstore"
DEPTHS = (5, 100, 1000)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20, 1)


def prepare() -> dict:
    """The BM25 index and the store, built once (their build seconds recorded when built here)."""
    from sparsa.data import load_corpus
    from sparsa.docstore import DocStore, build_docstore
    from sparsa.indexes import build_index

    built: dict = {}
    index, store = WORK / "rtqa-bm25", WORK / "rtqa-docs"
    if not index.exists():
        started = time.perf_counter()
        build_index("bm25", load_corpus(CORPUS), index, threads=2, corpus_name=CORPUS.name)
        built["index_seconds"] = round(time.perf_counter() - started, 1)
    if not store.exists():
        started = time.perf_counter()
        build_docstore(CORPUS, store, name=CORPUS.name)
        built["store_seconds"] = round(time.perf_counter() - started, 1)
    return {**built, "documents": len(DocStore(store)), "index_mb": folder_mb(index),
            "store_mb": folder_mb(store), "corpus_file_mb": round(CORPUS.stat().st_size / 2**20, 1)}


def child(way: str) -> dict:
    """One fresh process: load the chain with the passages held ``way`` (memory, store), ask one question."""
    from sparsa.rag.config import PipelineConfig
    from sparsa.rag.pipeline import load_pipeline

    steps = {"start": rss_mb()}
    started = time.perf_counter()
    dataset = str(CORPUS) if way == "memory" else str(WORK / "rtqa-docs")
    config = PipelineConfig.from_dict({
        "retrieval": {"indexes": [str(WORK / "rtqa-bm25")], "dataset": dataset, "k": 5},
        "router": {"path": str(ROUTER), "mode": "auto"},
        "reader": {"model": "smollm2-135m-instruct", "device": "cpu", "max_new_tokens": 16}}, "bench")
    corpus = None
    if way == "memory":  # the path before the store: the whole corpus read into memory
        from sparsa.data import load_corpus

        corpus = load_corpus(CORPUS)
        steps["corpus_loaded"] = rss_mb()
    pipeline = load_pipeline(config, corpus=corpus)
    load_seconds = time.perf_counter() - started
    steps["pipeline_loaded"] = rss_mb()
    question = json.loads(QUESTIONS.read_text())[0]["text"]
    started = time.perf_counter()
    answer = pipeline.answer(question, mode="auto")
    return {"way": way, "documents": type(pipeline.corpus).__name__, "rss_mb": steps,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "load_seconds": round(load_seconds, 2),
            "question_seconds": round(time.perf_counter() - started, 2),
            "route": answer.route, "passages": [h.doc_id for h in answer.passages]}


def ms(values: list[float]) -> dict:
    values = sorted(values)
    return {"median_ms": round(1000 * statistics.median(values), 3),
            "p95_ms": round(1000 * values[int(0.95 * (len(values) - 1))], 3)}


def latency(n: int) -> dict:
    """Per-question cost of turning hits into passages, and of the router's statistics, memory vs store."""
    from sparsa.data import load_corpus
    from sparsa.docstore import DocStore
    from sparsa.rag.routing import TermStats, question_features
    from sparsa.search import open_retriever

    questions = [q["text"] for q in json.loads(QUESTIONS.read_text()) if q.get("split") == "test"][:n]
    retriever = open_retriever(WORK / "rtqa-bm25")
    hits = [[h.doc_id for h in retriever.search_text(q, k=max(DEPTHS))] for q in questions]
    sources = {"memory": load_corpus(CORPUS), "store": DocStore(WORK / "rtqa-docs")}
    out: dict = {"questions": len(questions)}
    for way, source in sources.items():
        row: dict = {}
        for depth in DEPTHS:
            times = []
            for ids in hits:
                started = time.perf_counter()
                docs = source.fetch(ids[:depth])
                times.append(time.perf_counter() - started)
                assert None not in docs
            row[f"fetch_{depth}"] = ms(times)
        stats = TermStats.from_corpus(source)
        times = []
        for q in questions:
            started = time.perf_counter()
            question_features(q, stats)
            times.append(time.perf_counter() - started)
        row["router_features"] = ms(times)
        out[way] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=("memory", "store"), help=argparse.SUPPRESS)
    parser.add_argument("--questions", type=int, default=200, help="test questions timed")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    if not CORPUS.is_file():
        sys.exit(f"{CORPUS} not found: run python bench/bench_rag_longcontext.py --stages prepare "
                 "--dataset realtimeqa")
    WORK.mkdir(parents=True, exist_ok=True)
    build = prepare()
    memory = {}
    for way in ("memory", "store"):
        done = subprocess.run([sys.executable, __file__, "--child", way], capture_output=True, text=True,
                              check=True)
        memory[way] = json.loads(done.stdout.strip().splitlines()[-1])
    same = memory["memory"]["passages"] == memory["store"]["passages"]
    saved = round(memory["memory"]["peak_rss_mb"] - memory["store"]["peak_rss_mb"], 1)
    timing = latency(args.questions)
    print(f"{'':8} {'peak RSS MB':>12} {'load s':>8} {'fetch 5 ms':>11} {'fetch 100':>10} {'fetch 1000':>11} "
          f"{'router ms':>10}")
    for way in ("memory", "store"):
        m, t = memory[way], timing[way]
        print(f"{way:8} {m['peak_rss_mb']:>12} {m['load_seconds']:>8} {t['fetch_5']['median_ms']:>11} "
              f"{t['fetch_100']['median_ms']:>10} {t['fetch_1000']['median_ms']:>11} "
              f"{t['router_features']['median_ms']:>10}")
    print(f"peak RSS saved: {saved} MB; same passages: {same}; build: {build}")
    path = write_results("docstore", {
        "corpus": str(CORPUS.relative_to(ROOT)),
        "build": build, "memory": memory, "peak_rss_saved_mb": saved, "same_passages": same,
        "latency": timing})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
