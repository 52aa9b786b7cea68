"""Retrieve-or-recall routing on a mixed question set, and reader latency per stage.

    python bench/bench_rag.py routing --per-source 80        # routing table -> rag.json["routing"]
    python bench/bench_rag.py latency --questions 20         # per-stage latency -> rag.json["reader"]
    python bench/bench_rag.py latency --set-only --work .stage/rag --questions 8   # the set for a GPU run
    python bench/bench_rag.py latency --from-file SET.json --device cuda --key reader_gpu   # no Java

Routing: one BM25 index over the union of the corpus-needing sources' passages (``rag/qa_sets.py``);
every question is answered closed-book and from its top-k passages (generations cached under
``--work``, so reruns are cheap); routers are fitted on the dev half and scored on the test half.
Results merge into ``bench/results/rag.json`` (other keys, such as ``"amar"``, are kept).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, run_metadata, write_results
from sparsa.rag.answer_text import exact_match, short_answer, token_f1

from sparsa.types import Document

ROUTERS = {"popularity": ("subject_logdf", "relation_logdf"), "confidence": ("lm_logprob",),
           "popularity+confidence": ("subject_logdf", "relation_logdf", "lm_logprob"),
           "popularity+coverage": ("subject_logdf", "relation_logdf", "subject_in_corpus")}
NOTE = ("CPU timings on a 2-core machine shared with other jobs (load average 4-6): absolute seconds are "
        "inflated and noisy; compare stages, not machines.")


def merge_results(key: str, payload: dict) -> Path:
    """Write ``payload`` under ``key`` of rag.json, keeping the other keys (the Amar table...)."""
    path = RESULTS / "rag.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current.pop("meta", None)
    current[key] = payload
    return write_results("rag", current, packages=("torch", "transformers"))


class GenerationCache:
    """Reader outputs on disk, one JSON line each, keyed by model, config, question and passages."""

    def __init__(self, path: Path, reader):
        self.path, self.reader = path, reader
        from sparsa.rag import reader as prompts  # the prompt of each route is part of its key

        c = reader.config  # the fields that change a generation
        settings = [str(reader.path), c.max_context_tokens, c.max_passage_tokens, c.max_new_tokens, c.attention,
                    c.device, c.dtype, sorted(c.sparse_settings.items())]
        self.tags = {"recall": json.dumps([settings, prompts.RECALL_SYSTEM, prompts.RECALL_EXAMPLE]),
                     "retrieve": json.dumps([settings, prompts.READ_SYSTEM, prompts.READ_EXAMPLE])}
        self.entries = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry
        self.misses = 0

    def answer(self, question: str, passages: list[Document]) -> dict:
        tag = self.tags["retrieve" if passages else "recall"]
        key = hashlib.sha1(json.dumps([tag, question, [d.id for d in passages]]).encode()).hexdigest()
        if key not in self.entries:
            out = self.reader.answer(question, passages)
            entry = {"key": key, "text": out.text, "raw": out.raw, "citations": out.citations,
                     "passages": out.passages, "mean_logprob": out.mean_logprob, "timings": out.timings,
                     "prompt_tokens": out.prompt_tokens, "new_tokens": out.new_tokens}
            with self.path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
            self.entries[key] = entry
            self.misses += 1
        return self.entries[key]


def prepare_index(work: Path, docs: list[Document]) -> tuple[Path, Path]:
    """The mixed corpus as a JSONL file and its BM25 index, rebuilt when the passages change."""
    import shutil

    from sparsa.indexes import build_index

    from sparsa.types import Corpus

    corpus_file, index = work / "mixed" / "corpus.jsonl", work / "mixed-bm25"
    stamp = work / "mixed" / "fingerprint"
    fingerprint = hashlib.sha1("\n".join(d.id for d in docs).encode()).hexdigest()
    if not stamp.exists() or stamp.read_text() != fingerprint:
        shutil.rmtree(index, ignore_errors=True)
        corpus_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = corpus_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs))
        tmp.rename(corpus_file)
        stamp.write_text(fingerprint)
    if not (index / "sparsa.json").exists():
        build_index("bm25", Corpus(docs), index, threads=1)
    return corpus_file, index


def score(rows: list[dict], routes: list[bool]) -> dict:
    em = [r["em_retrieve"] if go else r["em_recall"] for r, go in zip(rows, routes, strict=True)]
    f1 = [r["f1_retrieve"] if go else r["f1_recall"] for r, go in zip(rows, routes, strict=True)]
    return {"em": round(float(np.mean(em)), 4), "f1": round(float(np.mean(f1)), 4),
            "retrievals": int(sum(routes)), "questions": len(rows)}


def routing(args: argparse.Namespace) -> dict:
    from sparsa.indexes import open_index
    from sparsa.rag.qa_sets import NEEDS_CORPUS, SOURCES, mixed_question_set
    from sparsa.rag.reader import Reader, ReaderConfig
    from sparsa.rag.routing import TermStats, fit_router, question_features

    from sparsa.progress import progress_bar
    from sparsa.types import Corpus, Query

    examples, docs = mixed_question_set(args.data, args.per_source, args.seed)
    _, index_path = prepare_index(args.work, docs)
    corpus = Corpus(docs)
    stats = TermStats.from_corpus(corpus)
    index = open_index(index_path)
    hits = index.retrieve([Query(e.id, e.question) for e in examples], k=args.k)
    reader = Reader(ReaderConfig(max_new_tokens=args.max_new_tokens, max_context_tokens=args.context_tokens,
                                 max_passage_tokens=args.passage_tokens))
    cache = GenerationCache(args.work / "generations.jsonl", reader)
    rows = []
    with progress_bar(len(examples), "answering (recall + retrieve)", unit="question", show=True) as bar:
        for e in _interleaved(examples):
            closed = cache.answer(e.question, [])
            passages = [corpus[h.doc_id] for h in hits[e.id]]
            opened = cache.answer(e.question, passages)
            closed["text"], opened["text"] = short_answer(closed["raw"]), short_answer(opened["raw"])  # current rules
            rows.append({"id": e.id, "source": e.source, "split": e.split,
                         "features": question_features(e.question, stats, closed["mean_logprob"]),
                         "recall": closed["text"], "retrieve": opened["text"],
                         "em_recall": exact_match(closed["text"], e.answers), "f1_recall": token_f1(closed["text"], e.answers),
                         "em_retrieve": exact_match(opened["text"], e.answers),
                         "f1_retrieve": token_f1(opened["text"], e.answers),
                         "citations_in_retrieved": set(opened["citations"]) <= {h.doc_id for h in hits[e.id]},
                         "answer_in_passages": any(_contains(corpus, hits[e.id], a) for a in e.answers[:5])})
            bar.update(1)
    dev = [r for r in rows if r["split"] == "dev"]
    test = [r for r in rows if r["split"] == "test"]
    table = {"always-retrieve": score(test, [True] * len(test)), "never-retrieve": score(test, [False] * len(test))}
    routers = {}
    for name, features in ROUTERS.items():
        model = fit_router([r["features"] for r in dev], [r["f1_retrieve"] for r in dev],
                           [r["f1_recall"] for r in dev], names=features, info={"dev_questions": len(dev)})
        routes = [model.route(r["features"]) == "retrieve" for r in test]
        table[f"routed ({name})"] = score(test, routes)
        routers[name] = {"weights": dict(zip(features, model.weights, strict=True)), "bias": model.bias,
                         "threshold": model.threshold,
                         "retrieve_rate_by_source": {s: round(float(np.mean([go for r, go in zip(test, routes, strict=True)
                                                                              if r["source"] == s])), 3) for s in SOURCES}}
        if name == "popularity+confidence":
            from sparsa.rag.routing import Router

            Router(model, stats).save(RESULTS / "rag_router.json")  # sparsa ask --router bench/results/rag_router.json
    oracle = [r["f1_retrieve"] > r["f1_recall"] for r in test]
    table["oracle"] = score(test, oracle)
    by_source = {s: {"always-retrieve": score([r for r in test if r["source"] == s], [True] * sum(r["source"] == s for r in test)),
                     "never-retrieve": score([r for r in test if r["source"] == s], [False] * sum(r["source"] == s for r in test))}
                 for s in SOURCES}
    _print_table(table)
    (args.work / "routing_rows.json").write_text(json.dumps(rows, indent=1))
    return {
        "setup": {"per_source": args.per_source, "seed": args.seed, "dev_questions": len(dev), "test_questions": len(test),
                  "corpus_passages": len(docs), "index": "Lucene BM25 (k1 0.9, b 0.4) over the union of the corpus-needing "
                  f"sources {list(NEEDS_CORPUS)}", "k": args.k, "reader": "smollm2-135m-instruct, greedy",
                  "max_new_tokens": args.max_new_tokens, "context_tokens": args.context_tokens,
                  "passage_tokens": args.passage_tokens, "metric": "SQuAD EM/F1, best over gold aliases",
                  "router_file": "bench/results/rag_router.json"},
        "test": table, "by_source_test": by_source, "routers": routers,
        "citations_within_retrieved": float(np.mean([r["citations_in_retrieved"] for r in rows])),
        "gold_answer_in_top_k": {s: round(float(np.mean([r["answer_in_passages"] for r in rows if r["source"] == s])), 3)
                                 for s in SOURCES},
        "note": NOTE,
    }


def _interleaved(examples: list) -> list:
    """Round-robin over sources, so a partial run covers every source evenly."""
    rank: dict[str, int] = {}
    keyed = []
    for e in examples:
        rank[e.source] = rank.get(e.source, 0) + 1
        keyed.append((rank[e.source], e.source, e))
    return [e for *_, e in sorted(keyed, key=lambda t: t[:2])]


def _contains(corpus, hits, answer: str) -> bool:
    from sparsa.rag.answer_text import normalize_answer

    needle = f" {normalize_answer(answer)} "
    return needle.strip() != "" and any(needle in f" {normalize_answer(corpus[h.doc_id].full_text)} " for h in hits)


def _print_table(table: dict) -> None:
    print(f"{'policy':28} {'EM':>7} {'F1':>7} {'retrievals':>11}")
    for name, row in table.items():
        print(f"{name:28} {row['em']:7.3f} {row['f1']:7.3f} {row['retrievals']:>5}/{row['questions']}")


def latency(args: argparse.Namespace) -> dict:
    """Per-stage seconds of the reader (prefill, decode) and, with an index, of retrieval."""
    import torch
    from sparsa.rag.reader import Reader, ReaderConfig

    items = json.loads(Path(args.from_file[0]).read_text()) if args.from_file else _latency_set(args)
    if args.set_only:
        print(f"wrote {args.work / 'latency_set.json'}: {len(items)} questions")
        return {}
    reader = Reader(ReaderConfig(model=args.model, max_new_tokens=args.max_new_tokens,
                                 max_context_tokens=args.context_tokens, max_passage_tokens=args.passage_tokens,
                                 device=args.device, dtype=args.dtype, attention=args.attention))
    rows = {"recall": [], "retrieve": []}
    for item in items[:2]:  # warm-up
        reader.answer(item["question"], [Document(**d) for d in item["passages"]])
    for item in items:
        for route, passages in (("recall", []), ("retrieve", [Document(**d) for d in item["passages"]])):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            out = reader.answer(item["question"], passages)
            rows[route].append({"prompt_tokens": out.prompt_tokens, "new_tokens": out.new_tokens, **out.timings,
                                "retrieve": item.get("retrieve_seconds", 0.0) if route == "retrieve" else 0.0})
    summary = {}
    for route, measured in rows.items():
        summary[route] = {key: round(statistics.median(m[key] for m in measured), 4)
                          for key in ("prompt_tokens", "new_tokens", "retrieve", "prefill", "decode", "read")}
        summary[route]["decode_per_token"] = round(statistics.median(
            m["decode"] / max(m["new_tokens"], 1) for m in measured), 4)
        print(route, summary[route])
    hardware = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    return {"device": hardware, "dtype": args.dtype, "attention": args.attention, "questions": len(items),
            "context_tokens": args.context_tokens, "max_new_tokens": args.max_new_tokens,
            "median_seconds": summary, "note": NOTE if args.device == "cpu" else "H200, one process"}


def _latency_set(args: argparse.Namespace) -> list[dict]:
    """Questions of the mixed set with their BM25 top-k passages (also saved for the GPU run)."""
    from sparsa.indexes import open_index
    from sparsa.rag.qa_sets import mixed_question_set

    from sparsa.types import Corpus, Query

    examples, docs = mixed_question_set(args.data, args.per_source, args.seed)
    _, index_path = prepare_index(args.work, docs)
    corpus, index = Corpus(docs), open_index(index_path)
    chosen = examples[:: max(len(examples) // args.questions, 1)][: args.questions]
    items = []
    for e in chosen:
        started = time.perf_counter()
        hits = index.retrieve([Query(e.id, e.question)], k=args.k)[e.id]
        items.append({"question": e.question, "retrieve_seconds": time.perf_counter() - started,
                      "passages": [{"id": h.doc_id, "text": corpus[h.doc_id].text, "title": corpus[h.doc_id].title}
                                   for h in hits]})
    (args.work / "latency_set.json").write_text(json.dumps(items))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("routing", "latency", "merge"))
    parser.add_argument("--data", type=Path, default=None, help="shared data folder (default: SPARSA_DATA_DIR)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rag/bench"), help="index, corpus and cache folder")
    parser.add_argument("--per-source", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--context-tokens", type=int, default=400)
    parser.add_argument("--passage-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on the loaded 2-core box)")
    parser.add_argument("--questions", type=int, default=20, help="latency: questions measured")
    parser.add_argument("--from-file", default=None, nargs="+",
                        help="latency: questions + passages JSON (no index needed); merge: the part(s) to merge")
    parser.add_argument("--set-only", action="store_true",
                        help="latency: only write WORK/latency_set.json (questions + passages for a GPU run)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="latency: reader LM name or folder")
    parser.add_argument("--attention", default="full", help="latency: full or sparse")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--key", default=None, help="rag.json key (default: routing / reader)")
    parser.add_argument("--out", type=Path, default=None, help="also write this part to a JSON file")
    args = parser.parse_args()
    if args.what == "merge":  # a part measured elsewhere (the H200 run's --out file) into rag.json
        if not (args.key and args.from_file):
            parser.error("merge needs --key and --from-file")
        parts = [json.loads(Path(f).read_text()) for f in args.from_file]
        # Several files (one per dtype from bench/gpu_rag.sh) merge as {dtype: part}. The file's own
        # "meta" describes the run of its other keys, so it stays; the part gets the merge's record.
        payload = parts[0] if len(parts) == 1 else {p["dtype"]: p for p in parts}
        payload["merged"] = {key: value for key, value in run_metadata().items() if key in ("command", "git_commit", "date")}
        path = RESULTS / "rag.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        current[args.key] = payload
        path.write_text(json.dumps(current, indent=2) + "\n")
        print("wrote", path)
        return
    import torch

    from sparsa.config import load_settings

    torch.set_num_threads(args.threads)
    args.data = args.data or load_settings().data_dir
    args.work.mkdir(parents=True, exist_ok=True)
    payload = routing(args) if args.what == "routing" else latency(args)
    if args.set_only:
        return
    if args.out:
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    if not args.from_file or args.key:
        print("wrote", merge_results(args.key or ("routing" if args.what == "routing" else "reader"), payload))


if __name__ == "__main__":
    main()
