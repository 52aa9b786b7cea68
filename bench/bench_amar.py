"""Amar on MetaQA test: Hits@1 of the LM alone, retrieved paths as plain text, and Amar gating.

Usage (after ``sparsa train amar --out HEAD ...``)::

    python bench/bench_amar.py --head HEAD --n 100 --hops 1 2

Questions are a fixed random subset (``--seed``) of each hop's test file. Generations are cached
per (mode, hop) as JSONL under ``--work``, so an interrupted run resumes. The table goes into
``bench/results/rag.json`` under the key ``"amar"`` (other keys of that file are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, run_metadata
from sparsa.rag.amar import AmarModel, aspect_items, first_answer, hits_at_1
from sparsa.rag.amar_train import item_labels
from sparsa.rag.answer_text import normalize_answer
from sparsa.rag.kg import KGRetriever, KnowledgeGraph, load_metaqa, retrieve_cached


def generations(model: AmarModel, retrievals, mode: str, path: Path, chunk: int) -> list[dict]:
    done = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    with path.open("a") as f:
        for start in range(len(done), len(retrievals), chunk):
            for row in model.generate(retrievals[start:start + chunk], mode, batch_size=chunk):
                f.write(json.dumps(row) + "\n")
                done.append(row)
            f.flush()
            print(f"  {mode}: {len(done)}/{len(retrievals)}", flush=True)
    return done[: len(retrievals)]


def coverage(retrievals, questions) -> dict:
    top = any_ = 0
    for r, q in zip(retrievals, questions):
        gold = {normalize_answer(a) for a in q.answers}
        hits = [bool(gold & {normalize_answer(t) for t in p.tails}) for p in r.paths]
        top += bool(hits and hits[0])
        any_ += any(hits)
    return {"answer_in_top_path": round(top / len(questions), 4), "answer_in_any_path": round(any_ / len(questions), 4)}


def kg_answer_hits(out: list[dict], retrievals, questions) -> float:
    """Diagnostic without the LM: Hits@1 of the first entity of the highest-gated path."""
    hits = 0.0
    for o, r, q in zip(out, retrievals, questions):
        items = aspect_items(r)
        paths = [i for i, item in enumerate(items) if item.kind == "path"]
        if paths and o["gates"]:
            best = max(paths, key=lambda i: o["gates"][i])
            hits += hits_at_1(items[best].tails[0], q.answers)
    return round(hits / len(out), 4)


def merge_results(amar: dict) -> Path:
    """Read-modify-write ``rag.json``: only the ``amar`` key changes (other helpers own the rest)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "rag.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    current["amar"] = amar
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(current, indent=2) + "\n")
    tmp.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/metaqa"))
    parser.add_argument("--head", type=Path, help="trained Amar head (sparsa train amar); needed for --modes amar")
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--n", type=int, default=100, help="test questions per hop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", default=["lm", "text", "amar"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/amar/bench"))
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--gate-mode", choices=["scale", "filter"], nargs="+", default=["scale", "filter"],
                        help="Amar variants to run: open gates scale the items, or only filter them")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    graph = KnowledgeGraph.load(args.data / "kb_reconstructed.txt.gz")
    retriever = KGRetriever(graph)
    if args.head is None and "amar" in args.modes:
        parser.error("--modes amar needs --head")
    model = AmarModel.load(args.head) if args.head is not None else AmarModel()
    variants = [m for m in args.modes if m != "amar"]
    if "amar" in args.modes:
        variants += [f"amar-{g}" for g in args.gate_mode]
    table: dict[str, dict] = {}
    for hop in args.hops:
        questions = load_metaqa(args.data, hop, "test", limit=args.n, seed=args.seed)
        retrievals = retrieve_cached(retriever, questions, args.work / f"test_{hop}hop_{args.n}_{args.seed}.pkl")
        row: dict = {"questions": len(questions), **coverage(retrievals, questions),
                     "kg_answer_retriever_top_path": round(sum(
                         hits_at_1(r.paths[0].tails[0], q.answers) if r.paths else 0.0
                         for r, q in zip(retrievals, questions)) / len(questions), 4)}
        for mode in variants:
            if mode.startswith("amar"):
                model.config = replace(model.config, gate_mode=mode.split("-")[1])
            cache = args.work / f"{mode.replace('amar-scale', 'amar')}_{hop}hop_{args.n}_{args.seed}.jsonl"
            out = generations(model, retrievals, mode.split("-")[0], cache, args.chunk)
            hits = [hits_at_1(o["answer"], q.answers) for o, q in zip(out, questions)]
            row[mode] = {"hits@1": round(sum(hits) / len(hits), 4)}
            if mode.startswith("amar"):
                items = [len(aspect_items(r)) for r in retrievals]
                row[mode]["items_open"] = round(sum(len(o["open"]) for o in out) / len(out), 2)
                row[mode]["items_retrieved"] = round(sum(items) / len(items), 2)
                row[mode]["kg_answer_gate_top_path"] = kg_answer_hits(out, retrievals, questions)
                row[mode]["answer_in_open_paths"] = round(sum(
                    any(item_labels([its[i] for i in o["open"]], q.answers)[k] == 1.0 for k in range(len(o["open"])))
                    for o, q, its in zip(out, questions, (aspect_items(r) for r in retrievals))) / len(out), 4)
            row[mode]["examples"] = [{"q": q.text, "gold": list(q.answers[:3]), "generated": o["answer"],
                                      "first_answer": first_answer(o["answer"])}
                                     for o, q in list(zip(out, questions))[:3]]
        table[f"{hop}-hop"] = row

    print(f"\n{'':8}" + "".join(f"{m:>13}" for m in variants))
    for name, row in table.items():
        print(f"{name:8}" + "".join(f"{100 * row[m]['hits@1']:>13.1f}" for m in variants))
    payload = {
        "meta": run_metadata(("torch", "transformers")),
        "metric": "Hits@1: first answer of the greedy generation (or the whole short answer) equals a gold "
                  "answer after SQuAD normalisation",
        "lm": model.config.model,
        "head": str(args.head),
        "training": json.loads((args.head / "training.json").read_text())
        if args.head is not None and (args.head / "training.json").is_file() else None,
        "test_subset": f"{args.n} questions per hop, numpy default_rng({args.seed}) without replacement",
        "modes": {"lm": "question only", "text": "retrieved entity, relations and paths as plain text",
                  "amar-scale": "gated, self-aligned soft prompts (inputs_embeds); open items scaled by their gate",
                  "amar-filter": "the same, open items unscaled (the gate only filters)"},
        "table": table,
        "notes": "CPU only (2 cores shared with other jobs, load ~10); MetaQA test subset, not the full test.",
    }
    if payload["training"]:
        payload["training"].pop("history", None)
    print(f"wrote {merge_results(payload)}")


if __name__ == "__main__":
    main()
