"""Retrieve-or-recall routing on a mixed question set, and reader latency per stage.

    python bench/bench_rag.py routing --per-source 80        # routing table -> rag.json["routing"]
    python bench/bench_rag.py latency --questions 20         # per-stage latency -> rag.json["reader"]
    python bench/bench_rag.py latency --set-only --work .stage/rag --questions 8   # the set for a GPU run
    python bench/bench_rag.py latency --from-file SET.json --device cuda --key reader_gpu   # no Java

Routing: one BM25 index over the union of the corpus-needing sources' passages (``rag/qa_sets.py``);
every question is answered closed-book and from its top-k passages (generations cached in
``--cache``, default ``WORK/generations.jsonl``, so reruns are cheap); routers are fitted on the dev
half and scored on the test half. ``--step`` splits it (``bench/rag_routing.py``) so the generation
can run on a GPU machine without Java (``bench/gpu_qwen_routing.sh``):

    python bench/bench_rag.py routing --step set --per-source 100 --set-out SET.json      # CPU, Java
    python bench/bench_rag.py routing --step generate --from-file SET.json --model M --model-key NAME \
        --device cuda --dtype bfloat16 --batch-size 64 --cache OUT/generations.jsonl       # GPU, no Java
    python bench/bench_rag.py routing --step report --from-file SET.json --model-key NAME \
        --device cuda --dtype bfloat16 --cache OUT/generations.jsonl --key routing_NAME   # CPU

The report needs the model key, device, dtype and token budgets the answers were generated with
(they are part of the cache key; the default model key, the resolved model folder, depends on
SPARSA_HOME). Results merge into ``bench/results/rag.json`` (other keys, such as ``"amar"``, are kept).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import RESULTS, run_metadata, write_results

from sparsa.types import Document

DEFAULT_MODEL = "smollm2-135m-instruct"
NOTE = ("CPU timings on a 2-core machine shared with other jobs (load average 4-6): absolute seconds are "
        "inflated and noisy; compare stages, not machines.")


def merge_results(key: str, payload: dict) -> Path:
    """Write ``payload`` under ``key`` of rag.json, keeping the other keys (the Amar table...)."""
    path = RESULTS / "rag.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current.pop("meta", None)
    current[key] = payload
    return write_results("rag", current, packages=("torch", "transformers"))


def routing(args: argparse.Namespace) -> dict:
    """One step of the routing experiment (``bench/rag_routing.py``), or all three in one process."""
    from rag_routing import GenerationCache, answer_rows, build_set, generation_items, read_set, report

    from sparsa.models import resolve_model
    from sparsa.rag.reader import ReaderConfig

    qset = read_set(Path(args.from_file[0])) if args.from_file else build_set(
        args.data, args.work, args.per_source, args.seed, args.k)
    if args.step == "set":
        out = args.set_out or args.work / "routing_set.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(qset))
        print(f"wrote {out}: {len(qset['questions'])} questions, {len(qset['passages'])} passages, "
              f"{out.stat().st_size / 2**20:.1f} MiB")
        return {}
    config = ReaderConfig(model=args.model, max_new_tokens=args.max_new_tokens, max_context_tokens=args.context_tokens,
                          max_passage_tokens=args.passage_tokens, device=args.device, dtype=args.dtype)
    # The first SmolLM2 cache was keyed by the resolved model folder: the default key keeps it valid.
    model_key = args.model_key or resolve_model(args.model, pull_missing=args.step != "report")
    cache = GenerationCache(args.cache or args.work / "generations.jsonl", model_key, config)
    summary_file = cache.path.with_name(cache.path.stem + ".summary.json")
    if args.step in ("all", "generate"):
        items = generation_items(qset)
        missing = sum(cache.get(q, [d.id for d in p]) is None for q, p in items)
        if missing:
            _generate(args, config, cache, items, missing, summary_file)
        if args.step == "generate":
            return {}
    rows = answer_rows(qset, cache)
    key = args.key or "routing"
    router_file = RESULTS / ("rag_router.json" if key == "routing" else f"rag_router_{key.removeprefix('routing_')}.json")
    result = report(qset, rows, None if args.no_merge else router_file)
    result["setup"].update({"reader": f"{Path(model_key).name}, greedy", "device": args.device, "dtype": args.dtype,
                            "max_new_tokens": args.max_new_tokens, "context_tokens": args.context_tokens,
                            "passage_tokens": args.passage_tokens, "router_file": f"bench/results/{router_file.name}"})
    if summary_file.exists():
        result["setup"]["generation"] = json.loads(summary_file.read_text())
    if args.device == "cpu":
        result["note"] = NOTE
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "routing_rows.json").write_text(json.dumps(rows, indent=1))
    return result


def _generate(args: argparse.Namespace, config, cache, items: list, missing: int, summary_file: Path) -> None:
    """Load the reader and fill the cache's missing answers; a summary of the run beside the cache."""
    import torch

    from sparsa.rag.reader import Reader

    started = time.perf_counter()
    reader = Reader(config)
    loaded = time.perf_counter() - started
    print(f"reader {config.model} on {reader.device} ({config.dtype}) loaded in {loaded:.1f} s; "
          f"{missing} of {len(items)} generations to do, batches of {args.batch_size}", flush=True)
    done = cache.fill(reader, items, args.batch_size, log=lambda m: print(m, flush=True))
    seconds = time.perf_counter() - started - loaded
    hardware = torch.cuda.get_device_name() if str(reader.device).startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    summary = {"model_key": cache.model_key, "hardware": hardware, "dtype": config.dtype, "batch_size": args.batch_size,
               "generations": done, "of": len(items), "load_seconds": round(loaded, 1),
               "generate_seconds": round(seconds, 1), "new_tokens": sum(e["new_tokens"] for e in cache.entries.values())}
    summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    print("generation:", json.dumps(summary), flush=True)


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
    from rag_routing import prepare_index

    from sparsa.rag.qa_sets import mixed_question_set
    from sparsa.search import open_retriever
    from sparsa.types import Corpus, Query

    examples, docs = mixed_question_set(args.data, args.per_source, args.seed)
    _, index_path = prepare_index(args.work, docs)
    corpus, index = Corpus(docs), open_retriever(index_path)
    chosen = examples[:: max(len(examples) // args.questions, 1)][: args.questions]
    items = []
    for e in chosen:
        started = time.perf_counter()
        hits = index.search([Query(e.id, e.question)], k=args.k)[e.id]
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
                        help="latency: questions + passages JSON (no index needed); merge: the part(s) to merge; "
                             "routing: the set file of '--step set'")
    parser.add_argument("--step", choices=("all", "set", "generate", "report"), default="all",
                        help="routing: one step (see above); all = the three in one process")
    parser.add_argument("--set-out", type=Path, default=None, help="routing --step set: the set file (WORK/routing_set.json)")
    parser.add_argument("--cache", type=Path, default=None, help="routing: generation cache (WORK/generations.jsonl)")
    parser.add_argument("--model-key", default=None,
                        help="routing: the reader's name in the cache key (default: the resolved --model folder)")
    parser.add_argument("--batch-size", type=int, default=1, help="routing: prompts generated together")
    parser.add_argument("--set-only", action="store_true",
                        help="latency: only write WORK/latency_set.json (questions + passages for a GPU run)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="reader LM name or folder")
    parser.add_argument("--attention", default="full", help="latency: full or sparse")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--key", default=None, help="rag.json key (default: routing / reader)")
    parser.add_argument("--out", type=Path, default=None, help="also write this part to a JSON file")
    parser.add_argument("--no-merge", action="store_true", help="leave rag.json alone (print, and --out)")
    args = parser.parse_args()
    if args.what == "routing" and args.step in ("all", "report") and not args.key and (
            args.model != DEFAULT_MODEL or args.model_key):
        parser.error("routing with another reader: pass --key (rag.json['routing'] is SmolLM2's table)")
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
    if not payload:  # a set or generation step, or --set-only
        return
    if args.out:
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    if not args.no_merge and (not args.from_file or args.key or args.what == "routing"):
        print("wrote", merge_results(args.key or ("routing" if args.what == "routing" else "reader"), payload))


if __name__ == "__main__":
    main()
