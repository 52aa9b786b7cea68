"""Dense retrieval on SciFact: minilm-l6 as shipped, after ICT / BFS / WLP / mixed pre-training on the
SciFact corpus, after fine-tuning on SciFact train, and hybrids with BM25 and learned sparse.

Three steps (the middle one is the only GPU work; it also runs on CPU with ``--device cpu``, slowly):

    python bench/bench_dense.py prepare --work .stage/dense/gpu        # pairs, corpus, queries
    python bench/dense_variants.py --work .stage/dense/gpu --out OUT    # train + search every variant
    python bench/bench_dense.py report --runs OUT --splade-model .stage/models/ft-mixed-bf16

Selection and tuning never see SciFact test: each pre-training task's learning rate is chosen by
nDCG@10 on the 809 SciFact *train* queries (pre-training uses no labels); fine-tuning uses 80 % of
the train queries' qrels and holds out 20 % ("dev", seeded); fusion weights are tuned on dev.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import random
import time
from pathlib import Path

from common import write_results

from sparsa.data import load_dataset
from sparsa.eval import evaluate_run
from sparsa.retrieval.dense_pretrain import labelled_pairs, write_pairs
from sparsa.retrieval.fusion import fuse
from sparsa.types import Qrels, Run

DATA = Path("/work/shared/data/scifact")
MEASURES = ("nDCG@10", "R@100")


def _write_jsonl(path: Path, records) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def prepare(work: Path, dev_fraction: float = 0.2) -> None:
    work.mkdir(parents=True, exist_ok=True)
    train, test = load_dataset(DATA, "train"), load_dataset(DATA, "test")
    _write_jsonl(work / "corpus.jsonl.gz",
                 ({"id": d.id, "title": d.title, "text": d.text} for d in train.corpus.documents))
    for split, data in (("train", train), ("test", test)):
        _write_jsonl(work / f"{split}_queries.jsonl.gz", ({"id": q.id, "text": q.text} for q in data.queries))
    ids = sorted(q.id for q in train.queries)
    dev = set(random.Random(13).sample(ids, round(dev_fraction * len(ids))))
    fit = [q for q in train.queries if q.id not in dev]
    labelled = labelled_pairs(fit, train.qrels, train.corpus)
    write_pairs(labelled, work / "labelled.jsonl.gz")
    (work / "dev_ids.json").write_text(json.dumps(sorted(dev)))
    print(f"labelled: {len(labelled)} pairs from {len(fit)} train queries; dev: {len(dev)} "
          "held-out train queries")


def read_tagged_runs(path: Path) -> dict[str, Run]:
    """One TREC file holding several runs, told apart by the run tag."""
    hits: dict[str, dict[str, list]] = {}
    from sparsa.types import Hit

    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            qid, _, doc, _, score, tag = line.split()
            hits.setdefault(tag, {}).setdefault(qid, []).append(Hit(doc, float(score)))
    return {tag: Run(results, name=tag) for tag, results in hits.items()}


def _scores(run: Run, qrels: Qrels) -> dict[str, float]:
    return {m: round(v, 4) for m, v in evaluate_run(run, qrels, MEASURES).aggregate.items()}


def _subset(qrels: Qrels, ids: set[str]) -> Qrels:
    return Qrels({q: j for q, j in qrels.items() if q in ids})


def first_stage_runs(work: Path, splade_model: str, queries: dict, splade_index: Path | None = None,
                     names: tuple[str, ...] = ("bm25", "splade")) -> tuple[dict, dict]:
    """BM25 (``build_index("bm25")``) and learned-sparse (exact) runs at depth 1000, cached in ``work``."""
    from sparsa.indexes import build_index
    from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder
    from sparsa.search import open_retriever

    corpus = load_dataset(DATA, "test").corpus
    timings, runs = {}, {}
    for name in names:
        folder = splade_index if name == "splade" and splade_index else work / f"scifact-{name}"
        started = time.perf_counter()
        if not (folder / "sparsa.json").is_file():
            if name == "bm25":
                build_index("bm25", corpus, folder)
            else:
                build_index("splade", corpus, folder, encoder=SpladeEncoder(SpladeConfig(model=splade_model)),
                            backends=("exact",))
            timings[f"{name}_index_seconds"] = round(time.perf_counter() - started, 1)
        retriever = None
        for split, topics in queries.items():
            cached = work / f"{name}_{split}.trec"
            if not cached.is_file():
                retriever = retriever or open_retriever(folder)
                retriever.search(topics, k=1000).write_trec(cached)
            runs[(name, split)] = Run.read_trec(cached)
            runs[(name, split)].name = name
    return runs, timings


def _index_record(folder: Path) -> dict:
    """Where the learned-sparse index came from (its manifest: encoder, build time)."""
    if not (folder / "sparsa.json").is_file():
        return {}
    manifest = json.loads((folder / "sparsa.json").read_text())
    return {"path": str(folder), "encoder": manifest.get("encoder"),
            "build_seconds": manifest.get("build_seconds"),
            "built_with": "sparsa index --dataset scifact --kind splade --model <model> --backend exact"}


def tune_fusion(runs: list[Run], qrels: Qrels, method: str,
                normalisation: str = "minmax") -> tuple[list[float], float]:
    """Grid search of weights (first run fixed at 1) by nDCG@10 on the tuning queries."""
    grid = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    best = ([1.0] * len(runs), -1.0)
    for rest in itertools.product(grid, repeat=len(runs) - 1):
        weights = [1.0, *rest]
        fused = fuse(runs, method, weights, k=100, depth=100, normalisation=normalisation)
        score = evaluate_run(fused, qrels, ("nDCG@10",)).aggregate["nDCG@10"]
        if score > best[1]:
            best = (weights, score)
    return best[0], round(best[1], 4)


def report(runs_dir: Path, splade_model: str, work: Path, splade_index: Path | None = None,
           skip_splade: bool = False) -> None:
    train, test = load_dataset(DATA, "train"), load_dataset(DATA, "test")
    dev_ids = (set(json.loads((work / "dev_ids.json").read_text()))
               if (work / "dev_ids.json").is_file() else set())
    dev_qrels = _subset(train.qrels, dev_ids)
    dense_test, dense_train = (read_tagged_runs(runs_dir / "test_runs.trec.gz"),
                               read_tagged_runs(runs_dir / "train_runs.trec.gz"))
    training = json.loads((runs_dir / "training.json").read_text())

    variants = {}
    for name, run in dense_test.items():
        row = {"test": _scores(run, test.qrels), "dev": _scores(dense_train[name], dev_qrels)}
        if "ft" not in name:  # no labels seen: every train query is a fair validation query
            row["train"] = _scores(dense_train[name], train.qrels)
        row["training"] = training.get(name, {})
        variants[name] = row
        print(f"{name:18s} test nDCG@10 {row['test']['nDCG@10']:.4f} R@100 {row['test']['R@100']:.4f}  train "
              f"{row.get('train', {}).get('nDCG@10', float('nan')):.4f}  dev {row['dev']['nDCG@10']:.4f}")
    selected = {}
    for task in ("ict", "bfs", "wlp", "mix"):
        options = [n for n in variants if n.startswith(f"{task}-lr") and "ft" not in n]
        if options:
            best = max(options, key=lambda n: variants[n]["train"]["nDCG@10"])
            selected[task] = {"variant": best, "chosen_by": "nDCG@10 on SciFact train queries",
                              **variants[best]["test"]}
    fine_tuned = [n for n in variants if "ft" in n]
    best_ft = max(fine_tuned, key=lambda n: variants[n]["dev"]["nDCG@10"]) if fine_tuned else "shipped"

    queries = {"test": test.queries, "dev": [q for q in train.queries if q.id in dev_ids]}
    names = ("bm25",) if skip_splade else ("bm25", "splade")
    first, timings = first_stage_runs(work, splade_model, queries, splade_index, names)
    baselines = {name: {"test": _scores(first[(name, "test")], test.qrels),
                        "dev": _scores(first[(name, "dev")], dev_qrels)}
                 for name in names}
    systems = {name: (first[(name, "test")], first[(name, "dev")]) for name in names}
    systems["dense"] = (dense_test[best_ft], dense_train[best_ft])
    systems["dense-shipped"] = (dense_test["shipped"], dense_train["shipped"])
    hybrids = []
    for combo in (("bm25", "dense"), ("splade", "dense"), ("bm25", "splade"), ("bm25", "splade", "dense"),
                  ("bm25", "dense-shipped"), ("bm25", "splade", "dense-shipped")):
        if any(s not in systems for s in combo):
            continue
        test_runs, dev_runs = [systems[s][0] for s in combo], [systems[s][1] for s in combo]
        for method, normalisation in (("rrf", "minmax"), ("interp", "minmax"), ("interp", "zscore")):
            label = method if method == "rrf" else f"interp-{normalisation}"
            settings = [("equal weights", [1.0] * len(combo), None)]
            weights, dev_score = tune_fusion(dev_runs, dev_qrels, method, normalisation)
            settings.append(("weights tuned on dev", weights, dev_score))
            for how, ws, tuned_dev in settings:
                fused = fuse(test_runs, method, ws, k=100, depth=100, normalisation=normalisation)
                row = {"runs": list(combo), "method": label, "weights": ws, "weights_from": how,
                       "dev_nDCG@10": tuned_dev, **_scores(fused, test.qrels)}
                hybrids.append(row)
                print(f"{'+'.join(combo):28s} {label:15s} {how:22s} w={ws} test nDCG@10 {row['nDCG@10']:.4f} "
                      f"R@100 {row['R@100']:.4f}")
    tuned = [h for h in hybrids if h["weights_from"] != "equal weights"]
    best_by_dev = max(tuned, key=lambda h: h["dev_nDCG@10"])
    payload = {
        "dataset": f"scifact (test: 300 queries; train: 809 queries, of which dev: {len(dev_ids)} "
                   "held out of fine-tuning)",
        "measures": list(MEASURES),
        "dense_variants": variants,
        "pretraining_selected": selected,
        "fine_tuned_for_hybrid": {"variant": best_ft, "chosen_by": "nDCG@10 on dev"},
        "first_stage": baselines, "first_stage_timings": timings,
        "splade_index": _index_record(splade_index or work / "scifact-splade"),
        "hybrids": hybrids,
        "best_hybrid_chosen_on_dev": best_by_dev,
        "best_hybrid_on_test (for reference; not a selection)": max(hybrids, key=lambda h: h["nDCG@10"]),
        "notes": [
            ("Dense variants were trained and searched on one H200 (bench/dense_variants.py; torch "
             "exact search, since the machine has no faiss); runs came back as TREC files and were "
             "evaluated here with ir_measures."),
            ("Pre-training: pairs from the SciFact corpus only (no labels), 3 draws per document "
             "per task; WLP uses title -> abstract (SciFact has titles, no links). 120 steps, "
             "batch 128, in-batch negatives."),
            ("Fine-tuning: SciFact train qrels minus the dev queries, 100 steps, batch 128, "
             "in-batch negatives."),
            ("Selection never used SciFact test: pre-training lr by train-query nDCG@10, fine-tuned model "
             "and fusion weights by the held-out dev queries (a subset of SciFact train). The learned-sparse "
             "model (ft-mixed-bf16) was itself fine-tuned on all SciFact train queries, dev included, so "
             "dev-tuned weights may favour it slightly."),
            "Fusion over the top 100 of each run.",
        ],
    }
    path = write_results("dense", payload, packages=("torch", "transformers", "faiss-cpu", "ir_measures"))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--work", type=Path, required=True)
    r = sub.add_parser("report")
    r.add_argument("--runs", type=Path, required=True, help="the --out folder of dense_variants.py")
    r.add_argument("--work", type=Path, required=True,
                   help="the prepare folder; BM25/SPLADE indexes go here too")
    r.add_argument("--splade-model", default=".stage/models/ft-mixed-bf16")
    r.add_argument("--splade-index", type=Path,
                   help="an index of --splade-model built before (sparsa index --kind splade)")
    r.add_argument("--skip-splade", action="store_true", help="hybrids of BM25 and dense only")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.work)
    else:
        report(args.runs, args.splade_model, args.work, args.splade_index, args.skip_splade)


if __name__ == "__main__":
    main()
