"""Learned-sparse effectiveness: BM25 vs SPLADE encoders on SciFact, Cranfield, CISI and TREC DL 2019.

Two steps, so the encoding can run on the GPU machine (which has no Java and no ir_measures):

    # 1. encode + exact search, write TREC runs (k=100), encoding timings, index size, query latency
    python bench/bench_lsr.py encode --out .stage/runs --model splade-tiny=splade-tiny \\
        --model splade-tiny-ft=path/to/trained [--model mistral-splade=path --decoder mistral-splade]
    # 2. evaluate every run in the folder with ir_measures, add BM25 from bench/results/bm25.json
    python bench/bench_lsr.py evaluate --runs .stage/runs

Runs are ``<system>.<dataset key>.trec``; keys are the dataset folders' names except TREC DL 2019
(``trec-dl-2019-passage``): ``dl19`` searches its whole ~10.8k-passage corpus, ``dl19-pool`` ranks only
each query's judged passages (``sparsa search --pool``; the pool comes from the qrels, or where no qrels
travel from a grade-free ``pool.tsv`` in the dataset folder, see bench/common/lsr.py). Per model and
dataset, ``timings.json`` (merged with any already in ``--out``) records the documents' encoding
(docs/s, timed after a warm-up on ``--warmup-docs`` marked texts that share no word with any corpus),
mean terms per document, the index's bytes on disk (``index_bytes``) and the median latency of one
query at a time, encoded and searched exactly (``query_ms_median``, after one warm-up query).

Step 2 writes bench/results/lsr.json (``--name NAME``: bench/results/NAME.json, for another set of runs)
and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import RESULTS, lsr, write_results

DATASETS = ("scifact", "cranfield", "cisi")  # evaluate's, until it reads DL 2019 too


def encode(args: argparse.Namespace) -> None:
    from sparsa.config import load_settings
    from sparsa.data import load_dataset
    from sparsa.eval.pool import judged_pool_run
    from sparsa.indexes.exact_sparse import ExactSparseSearcher
    from sparsa.indexes.sparse_matrix import SparseMatrix
    from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder
    from sparsa.types import Run

    data_dir = args.data_dir or load_settings().data_dir
    args.out.mkdir(parents=True, exist_ok=True)
    timings_path = args.out / "timings.json"  # merged: a later call adds datasets or models to a folder
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    datasets = {lsr.dataset_key(d): load_dataset(data_dir / lsr.dataset_folder(d)) for d in args.datasets}
    for spec in args.model:
        name, _, model = spec.partition("=")
        config = SpladeConfig.mistral_splade(model) if name in args.decoder else SpladeConfig(model=model)
        encoder = SpladeEncoder(config)
        card = lsr.device_name(encoder.device)
        first = next(iter(datasets.values()))
        started = time.perf_counter()  # kernels, allocator, tokenizer processes: not in the timed pass
        encoder.encode_documents(lsr.marked([d.full_text for d in first.corpus.documents], args.warmup_docs),
                                 show_progress=False)
        print(f"{name}: warm-up on {args.warmup_docs} marked texts, {time.perf_counter() - started:.1f} s",
              flush=True)
        for key, data in datasets.items():
            texts = [d.full_text for d in data.corpus.documents]
            started = time.perf_counter()
            docs = encoder.encode_documents(texts, show_progress=False)
            docs_s = time.perf_counter() - started
            query_texts = [q.text for q in data.queries]
            queries = encoder.encode_queries(query_texts, show_progress=False)
            matrix = SparseMatrix.from_vectors(list(data.corpus), docs, encoder.vocab_size)
            searcher = ExactSparseSearcher(matrix)
            hits = searcher.search_vectors(queries, args.k)
            Run({q.id: h for q, h in zip(data.queries, hits)},
                name=name).write_trec(args.out / f"{name}.{key}.trec")
            pool = lsr.judged_pool(data) if key in lsr.POOLED else None
            if pool is not None:  # as `sparsa search --pool`: every document scored, then the judged ones
                every = searcher.search_vectors(queries, len(matrix))
                run = Run({q.id: h for q, h in zip(data.queries, every)}, name=name)
                judged_pool_run(run, pool).write_trec(args.out / f"{name}.{key}-pool.trec")
            elif key in lsr.POOLED:
                print(f"{name}.{key}: no qrels or {lsr.POOL_FILE} in {data.path}: no pool run", flush=True)
            timings[f"{name}.{key}"] = {
                "docs": len(texts), "encode_seconds": round(docs_s, 2),
                "docs_per_s": round(len(texts) / docs_s, 1),
                "mean_doc_terms": round(matrix.nnz / len(matrix), 1),
                "device": str(encoder.device), "model": model, "device_name": card,
                "index_bytes": lsr.index_bytes(matrix),
                **lsr.query_latency(encoder, searcher, query_texts, args.k, args.latency_queries)}
            print(name, key, timings[f"{name}.{key}"], flush=True)
            timings_path.write_text(json.dumps(timings, indent=2))


def evaluate(args: argparse.Namespace) -> None:
    from sparsa.config import load_settings
    from sparsa.data import load_dataset
    from sparsa.eval import evaluate_run
    from sparsa.types import Run

    data_dir = args.data_dir or load_settings().data_dir
    timings = (json.loads((args.runs / "timings.json").read_text())
               if (args.runs / "timings.json").is_file() else {})
    bm25 = json.loads((RESULTS / "bm25.json").read_text())["results"]
    rows: dict[str, dict] = {f"bm25.{d}": {k: bm25[d][k] for k in ("nDCG@10", "R@100", "MRR@10")}
                             for d in DATASETS}
    qrels = {d: load_dataset(data_dir / d).qrels for d in DATASETS}
    per_query = {}
    for path in sorted(args.runs.glob("*.trec")):
        name, dataset = path.stem.rsplit(".", 1)
        if dataset not in qrels:
            print(f"skipped {path.name}: evaluate does not score {dataset} yet")
            continue
        result = evaluate_run(Run.read_trec(path), qrels[dataset], ("nDCG@10", "R@100", "MRR@10"))
        per_query[path.stem] = result.per_query
        rows[f"{name}.{dataset}"] = ({k: round(v, 4) for k, v in result.aggregate.items()}
                                     | timings.get(path.stem, {}))
    systems = sorted({key.rsplit(".", 1)[0] for key in rows}, key=lambda s: (s != "bm25", s))
    print(f"{'system':<22}" + "".join(f"{d + ' nDCG@10':>20}{'R@100':>8}" for d in DATASETS))
    for system in systems:
        cells = [rows.get(f"{system}.{d}") for d in DATASETS]
        print(f"{system:<22}" + "".join(f"{c['nDCG@10']:>20.4f}{c['R@100']:>8.4f}"
                                        if c else f"{'-':>20}{'-':>8}"
                                        for c in cells))
    notes = {"bm25": "Lucene BM25 flat, k1=0.9 b=0.4 (bench/results/bm25.json)",
             "runs": "exact dot-product search, k=100; encoding timings from the machine that encoded"}
    paired = _paired(per_query, *args.compare) if args.compare else {}
    payload = {"notes": notes, "results": rows, **({"paired": paired} if paired else {}),
               **({"extra": args.note} if args.note else {})}
    path = write_results(args.name, payload, gpu=args.gpu)
    print(f"wrote {path}")


def _paired(per_query: dict, first: str, second: str) -> dict:
    """Per dataset, ``second - first`` per test query (nDCG@10, R@100): mean, paired bootstrap 95% CI."""
    from sparsa.eval.bootstrap import paired_bootstrap

    out = {}
    for dataset in DATASETS:
        a, b = per_query.get(f"{first}.{dataset}"), per_query.get(f"{second}.{dataset}")
        if a and b:
            ids = sorted(a)
            key = f"{second}-vs-{first}.{dataset}"
            out[key] = {m: paired_bootstrap([b[q][m] for q in ids], [a[q][m] for q in ids])
                        for m in ("nDCG@10", "R@100")}
            print(f"{second} - {first}, {dataset}: {out[key]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    enc = sub.add_parser("encode")
    enc.add_argument("--out", type=Path, required=True)
    enc.add_argument("--model", action="append", required=True, help="NAME=MODEL (registry name or folder)")
    enc.add_argument("--decoder", nargs="*", default=[], help="names whose model is a decoder backbone")
    enc.add_argument("--datasets", nargs="+", default=list(lsr.DATASETS),
                     help="dataset folders under --data-dir (or keys: dl19 = trec-dl-2019-passage)")
    enc.add_argument("--data-dir", type=Path)
    enc.add_argument("--k", type=int, default=100)
    enc.add_argument("--warmup-docs", type=int, default=256,
                     help="marked copies of the first dataset's texts encoded, untimed, before any timing")
    enc.add_argument("--latency-queries", type=int, default=100,
                     help="queries timed one at a time per dataset (after one warm-up query)")
    ev = sub.add_parser("evaluate")
    ev.add_argument("--runs", type=Path, required=True)
    ev.add_argument("--data-dir", type=Path)
    ev.add_argument("--note", default="")
    ev.add_argument("--name", default="lsr", help="record name: bench/results/NAME.json")
    ev.add_argument("--gpu", help="the card that trained and encoded, recorded in meta.hardware")
    ev.add_argument("--compare", nargs=2, metavar=("A", "B"),
                    help="paired bootstrap of B - A per dataset (per-query nDCG@10 and R@100)")
    args = parser.parse_args()
    encode(args) if args.step == "encode" else evaluate(args)


if __name__ == "__main__":
    main()
