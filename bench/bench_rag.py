"""Retrieve-or-recall routing on a mixed question set, and reader latency per stage.

    python bench/bench_rag.py routing --per-source 80        # routing table -> rag.json["routing"]
    python bench/bench_rag.py latency --questions 20         # per-stage latency -> rag.json["reader"]
    python bench/bench_rag.py latency --set-only --work .stage/rag --questions 8   # the set for a GPU run
    python bench/bench_rag.py latency --from-file SET.json --device cuda --key reader_gpu   # no Java

Routing: every question of a mixed set is answered closed-book and from its BM25 top-k passages; routers
are fitted on the dev half and scored on the test half. ``--step`` splits it so the generation can run on
a GPU machine without Java (``bench/gpu_qwen_routing.sh``):

    python bench/bench_rag.py routing --step set --per-source 100 --set-out SET.json      # CPU, Java
    python bench/bench_rag.py routing --step generate --from-file SET.json --model M --model-key NAME \
        --device cuda --dtype bfloat16 --batch-size 64 --cache OUT/generations.jsonl       # GPU, no Java
    python bench/bench_rag.py routing --step report --from-file SET.json --model-key NAME \
        --device cuda --dtype bfloat16 --cache OUT/generations.jsonl --key routing_NAME   # CPU

``set`` (CPU, Java) writes the mixed question set (``rag/qa_sets.py``), each question's BM25 top-k
passages and its corpus and retriever features as one JSON file; ``generate`` (any device) answers every
question both ways into the cache (``--cache``, default ``WORK/generations.jsonl``; a killed run keeps its
work); ``report`` (CPU) needs only the set and the cache (``lm_logprob`` is the cached closed-book answer's).

The cache is the library's (``sparsa.rag.qa_sets.AnswerCache``: keyed by the model key, default the
resolved model folder, the reader settings, the route's prompt, the question and the passages), and so
are the features, router fits and scores (``sparsa.rag.routing``; ``sparsa train router`` is the same on
a user's own questions). Results merge into ``bench/results/rag.json`` (other keys are kept).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from common import RESULTS, run_metadata, write_results
from common.rag_sets import build_set, latency_set, read_set, set_passages

from sparsa.eval.bootstrap import paired_bootstrap
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


# -- routing, step 2: generation (any device), into a sparsa.rag.qa_sets.AnswerCache
def generation_items(qset: dict) -> list[tuple[str, list[Document]]]:
    """Each question closed-book and with its passages."""
    return [item for q in qset["questions"]
            for item in ((q["question"], []), (q["question"], set_passages(qset, q)))]


# -- routing, step 3: the report (CPU)
def by_source(rows: list[dict], routes: Sequence[bool], source: str) -> tuple[list[dict], list[bool]]:
    """The rows of one source and their routes."""
    pairs = [(r, go) for r, go in zip(rows, routes, strict=True) if r["source"] == source]
    return [r for r, _ in pairs], [go for _, go in pairs]


def answer_rows(qset: dict, cache) -> list[dict]:
    """One row per question: both answers, their EM/F1 and the routing features."""
    from sparsa.rag.answer_text import passages_containing, short_answer
    from sparsa.rag.routing import answer_scores

    rows, missing = [], 0
    for q in qset["questions"]:
        closed, opened = cache.get(q["question"], []), cache.get(q["question"], q["passages"])
        if closed is None or opened is None:
            missing += 1
            continue
        recall, retrieve = short_answer(closed["raw"]), short_answer(opened["raw"])  # the current rules
        passages, answers = set_passages(qset, q), q["answers"]
        rows.append({"id": q["id"], "source": q["source"], "split": q["split"],
                     "features": {**q["features"], "lm_logprob": closed["mean_logprob"]},
                     "recall": recall, "retrieve": retrieve, **answer_scores(recall, retrieve, answers),
                     "citations_in_retrieved": set(opened["citations"]) <= set(q["passages"]),
                     "answer_in_passages": any(passages_containing(a, [(d.id, d.full_text) for d in passages])
                                               for a in answers[:5])})
    if missing:
        raise SystemExit(f"{cache.path}: {missing} of {len(qset['questions'])} questions have no cached "
                         f"answer for settings {json.dumps(cache.settings)}; the cache holds entries of "
                         f"{cache.settings_present()} (model key first; run the generate step, or pass the "
                         "--model-key, --device, --dtype and token budgets it ran with)")
    return rows


def report(qset: dict, rows: list[dict], router_file: Path | None) -> dict:
    """Fixed policies, a router per feature set the rows have fitted on dev (the library's), the oracle;
    on test, overall and by source."""
    from sparsa.rag import routing
    from sparsa.rag.qa_sets import SOURCES

    dev = [r for r in rows if r["split"] == "dev"]
    test = [r for r in rows if r["split"] == "test"]
    fitted = routing.fit_feature_sets(dev, info={"dev_questions": len(dev)})
    policies = {"always-retrieve": [True] * len(test), "never-retrieve": [False] * len(test)}
    fixed = list(policies)
    policies.update({f"routed ({name})": routing.routes_of(model, test) for name, model in fitted.items()})
    policies["oracle"] = [r["f1_retrieve"] > r["f1_recall"] for r in test]
    table = {name: routing.score_routes(test, routes) for name, routes in policies.items()}
    best_fixed = max(fixed, key=lambda name: (table[name]["f1"], -table[name]["retrievals"]))
    dev_scores = {name: routing.score_routes(dev, routing.routes_of(model, dev))
                  for name, model in fitted.items()}
    dev_choice = routing.choose_router(dev_scores)
    routers = {}
    for name, model in fitted.items():
        routes = policies[f"routed ({name})"]
        rates = {s: round(float(np.mean(by_source(test, routes, s)[1] or [0])), 3) for s in SOURCES}
        routers[name] = {"weights": dict(zip(model.features, model.weights, strict=True)), "bias": model.bias,
                         "threshold": model.threshold, "dev": dev_scores[name],
                         "retrieve_rate_by_source": rates}
    if router_file is not None:
        routing.Router(fitted[dev_choice], stats=None).save(router_file)  # for sparsa ask --router FILE
    versus = {name: {metric: paired_bootstrap(routing.routed_values(test, routes, metric),
                                              routing.routed_values(test, policies[best_fixed], metric))
                     for metric in ("f1", "em")}
              for name, routes in policies.items() if name not in fixed}
    per_source = {s: {name: routing.score_routes(*by_source(test, routes, s))
                      for name, routes in policies.items() if name in fixed or name == "oracle"}
                  for s in SOURCES}
    print_table(table)
    return {
        "setup": {**qset["setup"], "dev_questions": len(dev), "test_questions": len(test),
                  "metric": "SQuAD EM/F1, best over gold aliases"},
        "test": table, "by_source_test": per_source, "routers": routers,
        "dev_choice": dev_choice,
        "versus_best_fixed": {"best_fixed": best_fixed, "paired_bootstrap_test": versus},
        "citations_within_retrieved": float(np.mean([r["citations_in_retrieved"] for r in rows])),
        "gold_answer_in_top_k": {
            s: round(float(np.mean([r["answer_in_passages"] for r in rows if r["source"] == s] or [0])), 3)
            for s in SOURCES},
    }


def print_table(table: dict) -> None:
    print(f"{'policy':32} {'EM':>7} {'F1':>7} {'retrievals':>11}")
    for name, row in table.items():
        print(f"{name:32} {row['em']:7.3f} {row['f1']:7.3f} {row['retrievals']:>5}/{row['questions']}")


# -- routing: the steps together
def routing(args: argparse.Namespace) -> dict:
    """One step of the routing experiment (see the module docstring), or all three in one process."""
    from sparsa.models import resolve_model
    from sparsa.rag.qa_sets import AnswerCache
    from sparsa.rag.reader import ReaderConfig

    qset = read_set(Path(args.from_file[0])) if args.from_file else build_set(args)
    if args.step == "set":
        out = args.set_out or args.work / "routing_set.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(qset))
        print(f"wrote {out}: {len(qset['questions'])} questions, {len(qset['passages'])} passages, "
              f"{out.stat().st_size / 2**20:.1f} MiB")
        return {}
    config = ReaderConfig(model=args.model, max_new_tokens=args.max_new_tokens,
                          max_context_tokens=args.context_tokens, max_passage_tokens=args.passage_tokens,
                          device=args.device, dtype=args.dtype, attention="full")  # as the records ran
    # The first SmolLM2 cache was keyed by the resolved model folder: the default key keeps it valid.
    model_key = args.model_key or resolve_model(args.model, pull_missing=args.step != "report")
    cache = AnswerCache(args.cache or args.work / "generations.jsonl", model_key, config)
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
    suffix = "" if key == "routing" else "_" + key.removeprefix("routing_")
    router_file = RESULTS / f"rag_router{suffix}.json"
    result = report(qset, rows, None if args.no_merge else router_file)
    result["setup"].update({"reader": f"{Path(model_key).name}, greedy", "device": args.device,
                            "dtype": args.dtype, "max_new_tokens": args.max_new_tokens,
                            "context_tokens": args.context_tokens, "passage_tokens": args.passage_tokens,
                            "router_file": f"bench/results/{router_file.name}"})
    if summary_file.exists():
        result["setup"]["generation"] = json.loads(summary_file.read_text())
    if args.device == "cpu":
        result["note"] = NOTE
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "routing_rows.json").write_text(json.dumps(rows, indent=1))
    return result


def _generate(args: argparse.Namespace, config, cache, items: list, missing: int, summary_file: Path) -> None:
    """Load the reader and fill the cache's missing answers; a summary of the run beside the cache."""
    from sparsa.rag.reader import Reader

    started = time.perf_counter()
    reader = Reader(config)
    loaded = time.perf_counter() - started
    print(f"reader {config.model} on {reader.device} ({config.dtype}) loaded in {loaded:.1f} s; "
          f"{missing} of {len(items)} generations to do, batches of {args.batch_size}", flush=True)
    done = cache.fill(reader, items, args.batch_size, log=lambda m: print(m, flush=True))
    seconds = time.perf_counter() - started - loaded
    summary = {"model_key": cache.model_key, "hardware": hardware_name(str(reader.device)),
               "dtype": config.dtype, "batch_size": args.batch_size, "generations": done, "of": len(items),
               "load_seconds": round(loaded, 1), "generate_seconds": round(seconds, 1),
               "new_tokens": sum(e["new_tokens"] for e in cache.entries.values())}
    summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    print("generation:", json.dumps(summary), flush=True)


# -- reader latency
def latency(args: argparse.Namespace) -> dict:
    """Per-stage seconds of the reader (prefill, decode) and, with an index, of retrieval."""
    import torch

    from sparsa.rag.reader import Reader, ReaderConfig

    items = json.loads(Path(args.from_file[0]).read_text()) if args.from_file else latency_set(args)
    if args.set_only:
        print(f"wrote {args.work / 'latency_set.json'}: {len(items)} questions")
        return {}
    reader = Reader(ReaderConfig(model=args.model, max_new_tokens=args.max_new_tokens,
                                 max_context_tokens=args.context_tokens,
                                 max_passage_tokens=args.passage_tokens, device=args.device, dtype=args.dtype,
                                 attention=args.attention))
    rows = {"recall": [], "retrieve": []}
    for item in items[:2]:  # warm-up
        reader.answer(item["question"], [Document(**d) for d in item["passages"]])
    for item in items:
        for route, passages in (("recall", []), ("retrieve", [Document(**d) for d in item["passages"]])):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            out = reader.answer(item["question"], passages)
            retrieve = item.get("retrieve_seconds", 0.0) if route == "retrieve" else 0.0
            rows[route].append({"prompt_tokens": out.prompt_tokens, "new_tokens": out.new_tokens,
                                **out.timings, "retrieve": retrieve})
    summary = {}
    for route, measured in rows.items():
        summary[route] = {key: round(statistics.median(m[key] for m in measured), 4)
                          for key in ("prompt_tokens", "new_tokens", "retrieve", "prefill", "decode", "read")}
        summary[route]["decode_per_token"] = round(statistics.median(
            m["decode"] / max(m["new_tokens"], 1) for m in measured), 4)
        print(route, summary[route])
    return {"device": hardware_name(args.device), "dtype": args.dtype, "attention": args.attention,
            "questions": len(items),
            "context_tokens": args.context_tokens, "max_new_tokens": args.max_new_tokens,
            "median_seconds": summary, "note": NOTE if args.device == "cpu" else "H200, one process"}


def hardware_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"cpu, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("routing", "latency", "merge"))
    parser.add_argument("--data", type=Path, help="shared data folder (default: SPARSA_DATA_DIR)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rag/bench"), help="index and cache folder")
    for flag, default in (("--per-source", 80), ("--seed", 0), ("--k", 3), ("--max-new-tokens", 16),
                          ("--context-tokens", 400), ("--passage-tokens", 128)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on 2 loaded cores)")
    parser.add_argument("--questions", type=int, default=20, help="latency: questions measured")
    parser.add_argument("--from-file", default=None, nargs="+",
                        help="latency: questions + passages JSON (no index needed); merge: the part(s) to "
                             "merge; routing: the set file of '--step set'")
    parser.add_argument("--step", choices=("all", "set", "generate", "report"), default="all",
                        help="routing: one step (see above); all = the three in one process")
    parser.add_argument("--set-out", type=Path, help="routing --step set: the set (WORK/routing_set.json)")
    parser.add_argument("--cache", type=Path, help="routing: generation cache (WORK/generations.jsonl)")
    parser.add_argument("--model-key", help="routing: the reader's name in the cache key (default: the "
                                            "resolved --model folder)")
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
        payload["merged"] = {key: value for key, value in run_metadata().items()
                             if key in ("command", "git_commit", "date")}
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
        key = args.key or ("routing" if args.what == "routing" else "reader")
        print("wrote", merge_results(key, payload))


if __name__ == "__main__":
    main()
