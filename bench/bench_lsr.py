"""Learned-sparse effectiveness: BM25 vs SPLADE encoders on SciFact, Cranfield, CISI and TREC DL 2019.

Two steps, so the encoding can run on the GPU machine (which has no Java and no ir_measures):

    # 1. encode + exact search, write TREC runs (k=100), encoding timings, index size, query latency
    python bench/bench_lsr.py encode --out .stage/runs --model splade-tiny=splade-tiny \\
        --model splade-tiny-ft=path/to/trained [--model mistral-splade=path --decoder mistral-splade]
    # 2. BM25 through the CLI (needs Java): indexes, DL 2019 runs, index sizes, query latency
    python bench/bench_lsr.py bm25 --out .stage/bm25
    # 3. evaluate every run of the folders with ir_measures (BM25 on SciFact, Cranfield, CISI: bm25.json);
    #    DIR:SYSTEM,... takes only those systems' runs from a folder
    python bench/bench_lsr.py evaluate --runs .stage/bm25 .stage/runs [other/runs:qwen-splade-syn]

Runs are ``<system>.<dataset key>.trec``; keys are the dataset folders' names except TREC DL 2019
(``trec-dl-2019-passage``): ``dl19`` searches its whole ~10.8k-passage corpus, ``dl19-pool`` ranks only
each query's judged passages (``sparsa search --pool``; the pool comes from the qrels, or where no qrels
travel from a grade-free ``pool.tsv`` in the dataset folder, see bench/common/lsr.py). Per model and
dataset, ``timings.json`` (merged with any already in ``--out``) records the documents' encoding
(docs/s, timed after a warm-up on ``--warmup-docs`` marked texts that share no word with any corpus),
mean terms per document, the index's bytes on disk (``index_bytes``) and the median latency of one
query at a time, encoded and searched exactly (``query_ms_median``, after one warm-up query).

Step 3 writes bench/results/lsr.json (``--name NAME``: bench/results/NAME.json, for another set of runs)
and prints the table: per system nDCG@10 / R@100 per dataset, then per corpus terms per document, index
MB, docs/s and ms per query.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import RESULTS, lsr, write_results

BM25_DATASETS = ("scifact", "cranfield", "cisi")  # BM25's effectiveness from bench/results/bm25.json


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
                **lsr.query_latency(lsr.encoded_search(encoder, searcher, args.k), query_texts,
                                    args.latency_queries)}
            print(name, key, timings[f"{name}.{key}"], flush=True)
            timings_path.write_text(json.dumps(timings, indent=2))


def evaluate(args: argparse.Namespace) -> None:
    from sparsa.config import load_settings
    from sparsa.data import load_dataset
    from sparsa.eval import evaluate_run
    from sparsa.types import Run

    data_dir = args.data_dir or load_settings().data_dir
    runs, timings = lsr.collect_runs(args.runs)
    bm25 = json.loads((RESULTS / "bm25.json").read_text())["results"]
    rows: dict[str, dict] = {f"bm25.{d}": {k: bm25[d][k] for k in ("nDCG@10", "R@100", "MRR@10")}
                             | timings.get(f"bm25.{d}", {}) for d in BM25_DATASETS}
    keys = sorted({lsr.run_parts(stem)[1] for stem in runs} | set(BM25_DATASETS), key=_key_order)
    qrels = {key: load_dataset(data_dir / lsr.dataset_folder(key)).qrels  # the datasets runs score on
             for key in {lsr.qrels_key(lsr.run_parts(stem)[1]) for stem in runs}}
    per_query = {}
    for stem, path in sorted(runs.items()):
        key = lsr.run_parts(stem)[1]
        measures = lsr.measures_for(key)
        result = evaluate_run(Run.read_trec(path), qrels[lsr.qrels_key(key)], tuple(measures.values()))
        per_query[stem] = {q: {name: v[m] for name, m in measures.items()}
                           for q, v in result.per_query.items()}
        row = {name: round(result.aggregate[m], 4) for name, m in measures.items()} | timings.get(stem, {})
        if row.get("device", "").startswith("cuda") and "device_name" not in row and args.gpu:
            row["device_name"] = args.gpu  # runs encoded before encode recorded the card: --gpu names it
        rows[stem] = row
    rows = dict(sorted(rows.items(), key=lambda item: (lsr.run_parts(item[0])[0] != "bm25",
                                                        lsr.run_parts(item[0])[0],
                                                        _key_order(lsr.run_parts(item[0])[1]))))
    lsr.print_table(rows, keys)
    notes = {
        "bm25": "Lucene BM25 flat, k1=0.9 b=0.4: SciFact, Cranfield, CISI from bench/results/bm25.json; "
                "TREC DL 2019 runs and every BM25 index size and latency from `bench_lsr.py bm25` (the CLI)",
        "runs": "exact dot-product search (scipy on CPU, torch sparse on GPU), k=100; encoding timings from "
                "the machine that encoded (each row's device, device_name)",
        "dl19": "TREC DL 2019 passage, the 43 judged queries: 'dl19' searches the whole 10,818-passage "
                "corpus (the 9,139 judged passages + 1,679 unjudged), 'dl19-pool' ranks only each query's "
                "own judged passages (sparsa search --pool). nDCG@10 with the graded judgements (0-3) as "
                "gains; R@100 and MRR@10 count grade >= 2 as relevant (R(rel=2)@100, RR(rel=2)@10), "
                "the TREC DL track's convention; SciFact, Cranfield, CISI count any grade > 0",
        "index_bytes": "what a user's index holds on disk: learned sparse, the vectors/ folder "
                       "LearnedSparseIndex.build writes (indptr, indices, values .npy + doc_ids.json; the "
                       "exact backend stores nothing else); BM25, the Lucene files its manifest lists; "
                       "manifests left out",
        "query_ms_median": "median ms per query, one query at a time (encode + exact search, k=100; BM25: "
                           "Lucene search), after one warm-up query, over up to latency_queries queries",
        "docs_per_s": "documents encoded per second, one pass over the corpus after a warm-up on marked "
                      "texts that share no word with it (runs encoded before that warm-up existed lack "
                      "index_bytes and query_ms_median); on a shared 2-core CPU the CPU figures vary "
                      "with the other load",
        "run_folders": list(args.runs),
    }
    paired = {}
    for first, second in args.compare or []:
        paired |= _paired(per_query, first, second, keys)
    payload = {"notes": notes, "results": rows, **({"paired": paired} if paired else {}),
               **({"extra": args.note} if args.note else {})}
    path = write_results(args.name, payload, gpu=args.gpu, path=args.out)
    print(f"wrote {path}")


def _key_order(key: str) -> tuple[int, str]:
    order = [lsr.dataset_key(d) for d in lsr.DATASETS]
    base = lsr.qrels_key(key)
    return (order.index(base) if base in order else len(order), key)


def _paired(per_query: dict, first: str, second: str, keys) -> dict:
    """Per dataset, ``second - first`` per test query (nDCG@10, R@100): mean, paired bootstrap 95% CI."""
    from sparsa.eval.bootstrap import paired_bootstrap

    out = {}
    for dataset in keys:
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
    bm = sub.add_parser("bm25", help="BM25 through the CLI: indexes, DL 2019 runs, index sizes, latency")
    bm.add_argument("--out", type=Path, required=True)
    bm.add_argument("--datasets", nargs="+", default=list(lsr.DATASETS))
    bm.add_argument("--data-dir", type=Path)
    bm.add_argument("--k", type=int, default=100)
    bm.add_argument("--latency-queries", type=int, default=100)
    ev = sub.add_parser("evaluate")
    ev.add_argument("--runs", nargs="+", required=True, metavar="DIR[:SYSTEM,...]",
                    help="folders of runs (+ timings.json); after a colon, only those systems' runs")
    ev.add_argument("--out", type=Path, help="write the record here instead of bench/results/NAME.json")
    ev.add_argument("--data-dir", type=Path)
    ev.add_argument("--note", default="")
    ev.add_argument("--name", default="lsr", help="record name: bench/results/NAME.json")
    ev.add_argument("--gpu", help="the card that trained and encoded, recorded in meta.hardware")
    ev.add_argument("--compare", nargs=2, metavar=("A", "B"), action="append",
                    help="paired bootstrap of B - A per dataset (per-query nDCG@10 and R@100); repeatable")
    args = parser.parse_args()
    if args.step == "bm25":
        from sparsa.config import load_settings

        lsr.bm25_step(args.out, args.data_dir or load_settings().data_dir, args.datasets, args.k,
                      args.latency_queries)
    else:
        encode(args) if args.step == "encode" else evaluate(args)


if __name__ == "__main__":
    main()
