"""Train and search every dense variant of bench_dense.py; runs on the GPU machine (or on CPU, slowly).

Input: the folder ``bench_dense.py prepare`` writes (corpus, queries, pairs as JSONL.gz; no Java,
ir_measures or shared data needed). For each variant it trains a model with
``sparsa.retrieval.dense_train`` (shipped minilm-l6 needs none), builds a flat dense index with
``build_index("dense", ...)`` and searches it (torch exact search on a GPU without faiss-gpu), and
appends top-``depth`` runs in TREC format (run tag = variant) to ``<out>/{test,train}_runs.trec.gz``.
``<out>/training.json`` records each variant's training stages, steps and wall time.

    python bench/dense_variants.py --work .stage/dense/gpu --out $OUT [--device cuda]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import shutil
import time
from pathlib import Path

from sparsa.indexes import build_index, open_index
from sparsa.retrieval.dense import DenseConfig, DenseEncoder
from sparsa.retrieval.dense_pretrain import pretraining_pairs, read_pairs
from sparsa.retrieval.dense_train import DenseTrainConfig, Stage, train_dense
from sparsa.search import EncodedRetriever
from sparsa.types import Corpus, Document, Query

# name -> (start model or variant, stages as (pairs: a task or a file, steps, lr))
PRETRAIN_STEPS, FINETUNE_STEPS, BATCH = 120, 100, 128
VARIANTS: dict[str, tuple[str, list[tuple[str, int, float]]]] = {"shipped": ("minilm-l6", [])}
for task in ("ict", "bfs", "wlp", "mix"):
    for lr in (1e-5, 3e-5):
        VARIANTS[f"{task}-lr{lr:g}"] = ("minilm-l6", [(task, PRETRAIN_STEPS, lr)])
PAIR_SEEDS = (13, 14, 15)  # three draws of sentences per document (WLP pairs repeat: title -> abstract)
VARIANTS["ft"] = ("minilm-l6", [("labelled.jsonl.gz", FINETUNE_STEPS, 2e-5)])
for lr in (1e-5, 3e-5):
    VARIANTS[f"mix-lr{lr:g}+ft"] = (f"mix-lr{lr:g}", [("labelled.jsonl.gz", FINETUNE_STEPS, 2e-5)])


def _jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _append_run(path: Path, run, tag: str) -> None:
    with gzip.open(path, "at", encoding="utf-8") as f:
        for qid, hits in run.items():
            f.writelines(f"{qid} Q0 {h.doc_id} {rank} {h.score:.6f} {tag}\n"
                         for rank, h in enumerate(hits, 1))


def _pairs(corpus: Corpus, source: str, work: Path) -> list:
    """Pre-training pairs are drawn here from the corpus (same seeds as anywhere); labelled ones read."""
    if source.endswith(".jsonl.gz"):
        return read_pairs(work / source)
    return [p for seed in PAIR_SEEDS for p in pretraining_pairs(corpus, source, seed=seed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--only", nargs="*", help="variants to run (default: all)")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every stage's steps (smoke tests)")
    parser.add_argument("--batch-size", type=int, default=BATCH)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    corpus = Corpus(Document(d["id"], d["text"], d.get("title", ""))
                    for d in _jsonl(args.work / "corpus.jsonl.gz"))
    queries = {split: [Query(q["id"], q["text"]) for q in _jsonl(args.work / f"{split}_queries.jsonl.gz")]
               for split in ("test", "train")}
    dev_ids = set(json.loads((args.work / "dev_ids.json").read_text()))
    models, records = args.out / "models", {}
    for name, (start, stages) in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        model = "minilm-l6"
        if stages:
            base = str(models / start) if start in VARIANTS else start
            parts = [Stage(source, _pairs(corpus, source, args.work), max(1, round(steps * args.steps_scale)),
                           {"pairs": source, "lr": lr})
                     for source, steps, lr in stages]
            model = str(models / name)
            for stage, (_, _, lr) in zip(parts, stages, strict=True):  # one lr per stage: one call each
                train_dense([stage], model, DenseTrainConfig(model=base, batch_size=args.batch_size, lr=lr),
                            args.device, show_progress=False)
                base = model
        trained_s = time.perf_counter() - started
        encoder = DenseEncoder(DenseConfig(model=model, device=args.device))
        index = build_index("dense", corpus, args.out / "index", encoder=encoder, show_progress=False)
        retriever = EncodedRetriever(encoder, open_index(index))
        for split, topics in queries.items():
            if split == "train" and "ft" in name:  # fine-tuned on the others: only held-out dev queries count
                topics = [q for q in topics if q.id in dev_ids]
            _append_run(args.out / f"{split}_runs.trec.gz",
                        retriever.search(topics, k=args.depth, show_progress=False), name)
        manifest = json.loads((Path(model) / "sparsa.json").read_text()) if stages else {}
        records[name] = {"start": start, "stages": manifest.get("stages", []),
                         "train_seconds": round(trained_s, 1),
                         "total_seconds": round(time.perf_counter() - started, 1),
                         "device": str(encoder.device)}
        print(json.dumps({name: records[name]}), flush=True)
        (args.out / "training.json").write_text(json.dumps(records, indent=2))
    shutil.rmtree(args.out / "index", ignore_errors=True)
    if not args.out.joinpath("keep_models").exists():
        shutil.rmtree(models, ignore_errors=True)


if __name__ == "__main__":
    main()
