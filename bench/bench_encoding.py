"""Encoding throughput on the SciFact corpus: sparsa's encoders against sentence-transformers.

    python bench/bench_encoding.py [--device cpu|cuda] [--models splade-tiny minilm-l6 smollm2]
        [--baseline-docs N] [--our-docs N] [--decoder-docs N] [--repeats N] [--warmup-docs N]
        [--baseline-dtypes float32 bfloat16 float16] [--baseline-batch-sizes 32 64 128 256]
        [--name encoding] [--tokenize-only]

What is timed is what an indexing job does: every document encoded once, texts in, vectors out on the
host (tokenisation included; model load excluded and reported as ``load_seconds``). The texts are
unseen: each timed pass runs in a fresh Python process (``bench/encoding_worker.py``), and it is that
process's first and only pass over the SciFact corpus texts (title + abstract, the real texts, so token
statistics are the corpus's own). Nothing an earlier pass tokenised can be cached: sparsa's WordPiece
word cache (``sparsa/wordpiece.py``), its tokenizer processes (``sparsa/batching.py``) and any cache of
the baseline start empty. Before the timed pass each process warms up (``warmup_seconds``: CUDA context,
kernels, allocator; on a GPU, ``--warmup-docs`` defaults to enough texts to start sparsa's tokenizer
processes, as a long job has them running) on marked copies of corpus texts: every word gets the suffix
``zq``, so the warm-up shares no word with the corpus and primes no word cache for it. Each process
times at least the full corpus once (or the first ``--our-docs``/``--baseline-docs`` texts).

Per model: ours is timed in ``--repeats`` processes (the median is reported); sentence-transformers
runs every configuration a user could pick, each in its own process: dtype (float32, bfloat16, float16
on CUDA; float32 on CPU, bfloat16 too where the CPU has native bf16) x batch size (32, 64, 128, 256).
Every configuration's docs/s is reported (``baseline_sweep``), the fastest is ``baseline`` (with
``baseline_config``), and ``speedup_vs_best_baseline`` compares ours' median with it. nDCG@10 / R@100
on the SciFact test queries come from the timed encodings of the original texts (queries encoded
afterwards, untimed) by exact sparse (scipy) or dense (numpy) search, whenever a run covered the whole
corpus. Peak memory: process RSS on CPU, allocated CUDA memory on GPU. Tokenisation alone is timed in
one more fresh process: the encoder's own path on its first pass (``tokenize_only_docs_per_s``), then
the plain Hugging Face call it replaced (``tokenize_plain_hf_call_docs_per_s``; the Rust WordPiece has
no cache, and sparsa's path uses private copies of it), with the mean tokens per document of the timed
and the warm-up texts. The SmolLM2 (Mistral-SPLADE) row has no sentence-transformers counterpart: its
baseline is the same encoder with full-logits reference pooling (batch 8). A ``model:variant`` row
(float32, bfloat16, chunked, screened, triton) changes ours only; it reuses the model's baseline sweep.
Prints a table and writes bench/results/<name>.json (rows written as each model finishes).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import write_results

from sparsa.batching import POOL_MIN_TEXTS
from sparsa.config import load_settings
from sparsa.data import load_dataset
from sparsa.eval import evaluate_run
from sparsa.indexes.exact_sparse import ExactSparseSearcher
from sparsa.indexes.sparse_matrix import SparseMatrix
from sparsa.indexes.vector_search import ExactSearch
from sparsa.sdpa_backends import SDPA_SETTINGS
from sparsa.types import Hit, Run

PACKAGES = ("torch", "transformers", "sentence-transformers", "triton", "tokenizers", "scipy")
MODELS = ("splade-tiny", "minilm-l6", "smollm2")
SMOLLM2_BASELINE = {"dtype": "auto", "batch_size": 8}  # full-logits reference pooling needs small batches
WARMUP_MARK = "zq"  # appended to every word of the warm-up texts: no SciFact word ends up shared


def effectiveness(kind: str, docs, queries, data) -> dict[str, float]:
    """nDCG@10 and R@100 of exact search with ``queries`` over ``docs`` (the encodings of ``data``'s test
    queries and corpus): the library's exact sparse search (scipy) or exact inner product (numpy)."""
    doc_ids = [d.id for d in data.corpus.documents]
    if kind == "sparse":
        vocab = 1 + max((int(v.indices.max()) for v in (*docs, *queries) if v.nnz), default=0)
        hits = ExactSparseSearcher(SparseMatrix.from_vectors(doc_ids, docs, vocab), "cpu").search_vectors(
            queries, 100)
    else:
        scores, rows = ExactSearch(np.asarray(docs)).search_vectors(np.asarray(queries), 100)
        hits = [[Hit(doc_ids[r], float(v)) for v, r in zip(top_scores, top_rows, strict=True)]
                for top_scores, top_rows in zip(scores, rows, strict=True)]
    run = Run({q.id: found for q, found in zip(data.queries, hits, strict=True)})
    measured = evaluate_run(run, data.qrels, ("nDCG@10", "R@100")).aggregate
    return {name: round(value, 4) for name, value in measured.items()}


def agreement(kind: str, ours, theirs) -> dict[str, float]:
    """How close two encodings of the same texts are (max abs difference; sparsity patterns)."""
    if kind == "dense":
        ours, theirs = np.asarray(ours), np.asarray(theirs)
        return {"max_abs_diff": float(np.abs(ours - theirs).max()),
                "min_cosine": float(np.min(np.sum(ours * theirs, axis=1)))}
    same_terms = np.mean([np.array_equal(a.indices, b.indices) for a, b in zip(ours, theirs, strict=True)])
    diffs = [np.abs(a.values - b.values).max() if np.array_equal(a.indices, b.indices) and a.nnz else 0.0
             for a, b in zip(ours, theirs, strict=True)]
    return {"same_terms_fraction": float(same_terms),
            "max_abs_diff_same_terms": float(max(diffs, default=0.0))}


class Jobs:
    """Runs each job in a fresh Python process (``encoding_worker.py``) and scores its result."""

    def __init__(self, args, data, folder: Path):
        self.args, self.data, self.folder = args, data, folder
        self.count, self.hardware = 0, None

    def run(self, job: str, model: str, docs: int, **spec: object) -> dict:
        """The worker's result (``entry`` scored when it covered the corpus), or ``{"error": ...}``."""
        self.count += 1
        out = self.folder / f"job{self.count}.pkl"
        args = self.args
        spec = {"job": job, "model": model, "docs": docs, "device": args.device, "threads": args.threads,
                "dataset": args.dataset, "warmup_docs": args.warmup_docs, "warmup_mark": WARMUP_MARK,
                "decoder_top_k": args.decoder_top_k, "out": str(out),
                "queries": job != "tokenize" and model != "smollm2" and docs == len(self.data.corpus), **spec}
        worker = [sys.executable, str(Path(__file__).with_name("encoding_worker.py")), json.dumps(spec)]
        code = subprocess.run(worker, check=False).returncode
        if code:
            return {"error": f"worker exited with code {code}"}
        with open(out, "rb") as f:
            result = pickle.load(f)
        out.unlink()
        hardware = result.pop("hardware")
        self.hardware = self.hardware or hardware
        if "entry" in result:
            result["entry"]["texts"] = self.texts(docs)
            if "queries" in result:
                result["entry"].update(effectiveness(result["kind"], result["docs"], result.pop("queries"),
                                                     self.data))
        return result

    def texts(self, docs: int) -> str:
        return (f"unseen: the first {docs} {self.data.name} corpus documents (title + abstract), encoded "
                f"once, on their first pass in a fresh process; warm-up on {self.args.warmup_docs} marked "
                f"copies (every word + '{WARMUP_MARK}': no word shared with the corpus)")


def baseline_sweep(jobs: Jobs, model: str, docs: int) -> list[dict]:
    """Every baseline configuration's result, in sweep order (each in its own process)."""
    args = jobs.args
    # On a GPU, SDPA as torch picks it and with cuDNN off: a user can switch it off as our encoders do, and
    # cuDNN plans every new (batch, length) shape (bench/results/indexing_gpu.json: bfloat16 1,636 -> 2,556
    # docs/s for sentence-transformers without it).
    sdpa = SDPA_SETTINGS if args.device == "cuda" else ("default",)
    configs = [SMOLLM2_BASELINE] if model == "smollm2" else [
        {"dtype": dtype, "batch_size": size, "sdpa": choice}
        for dtype, size, choice in itertools.product(args.baseline_dtypes, args.baseline_batch_sizes, sdpa)]
    results = []
    for config in configs:
        results.append({"config": config, **jobs.run("baseline", model, docs, **config)})
        shown = "/".join(str(config.get(key, "-")) for key in ("dtype", "batch_size", "sdpa"))
        print(f"{model:12} baseline  {shown:28} {describe(results[-1])}", flush=True)
    return results


def describe(result: dict) -> str:
    if "error" in result:
        return result["error"]
    entry = result["entry"]
    return f"{entry['docs_per_s']:9.1f} docs/s ({entry['docs']} docs, nDCG@10 {entry.get('nDCG@10', '-')})"


def bench_model(model: str, variant: str, jobs: Jobs, n_texts: int, sweeps: dict) -> dict:
    args = jobs.args
    n_ours = n_texts if model != "smollm2" else min(n_texts, args.decoder_docs)
    n_base = min(args.baseline_docs or n_texts, n_texts if model != "smollm2" else n_ours)
    row: dict = {"model": model, "variant": variant}
    tokenized = jobs.run("tokenize", model, n_ours, variant=variant)
    if "error" in tokenized:
        raise SystemExit(f"{model}:{variant} tokenisation job failed: {tokenized['error']}")
    row.update(tokenized)
    row["tokenize_texts"] = jobs.texts(n_ours)
    if args.tokenize_only:
        return row
    runs = [jobs.run("ours", model, n_ours, variant=variant) for _ in range(args.repeats)]
    failed = [r["error"] for r in runs if "error" in r]
    if failed:
        raise SystemExit(f"{model}:{variant} ours failed: {failed[0]}")
    runs.sort(key=lambda r: r["entry"]["docs_per_s"])
    median = runs[(len(runs) - 1) // 2]  # the lower median
    row["kind"] = median["kind"]
    if model == "smollm2" and args.decoder_top_k:
        row["doc_top_k"] = args.decoder_top_k
    row["ours_config"] = median["entry"]["config"]
    row["ours"] = {**median["entry"], "runs_docs_per_s": [r["entry"]["docs_per_s"] for r in runs],
                   "reported": f"median of {len(runs)} fresh processes"}
    if model not in sweeps:
        sweeps[model] = baseline_sweep(jobs, model, n_base)
    sweep = sweeps[model]
    done = [r for r in sweep if "entry" in r]
    if not done:
        raise SystemExit(f"{model}: every baseline configuration failed")
    best = max(done, key=lambda r: r["entry"]["docs_per_s"])
    row["baseline_config"] = best["entry"]["config"]
    implementation = ("same encoder, full-logits reference pooling" if model == "smollm2"
                      else "sentence-transformers")
    row["baseline"] = {**best["entry"], "implementation": implementation, "reported": "fastest configuration"}
    row["baseline_sweep"] = [r.get("entry") or {"config": r["config"], "error": r["error"]} for r in sweep]
    reference = done[0]  # the first configuration that ran: float32 unless --baseline-dtypes says otherwise
    shared = min(n_ours, n_base)
    row["agreement_on_shared_docs"] = {
        "docs": shared, "baseline_config": reference["entry"]["config"],
        **agreement(row["kind"], median["docs"][:shared], reference["docs"][:shared])}
    row["speedup_vs_best_baseline"] = round(row["ours"]["docs_per_s"] / row["baseline"]["docs_per_s"], 2)
    return row


def print_row(row: dict, tokenize_only: bool) -> None:
    name = f"{row['model']:12} {row['variant']:9}"
    tokens = row["mean_tokens_per_doc"]
    print(f"{name} tokenise {row['tokenize_only_docs_per_s']:9.1f} docs/s (plain HF call "
          f"{row['tokenize_plain_hf_call_docs_per_s']:.1f}); tokens/doc {tokens['timed']} "
          f"(warm-up texts {tokens['warmup']})", flush=True)
    if tokenize_only:
        return
    ours, base, config = row["ours"], row["baseline"], row["baseline_config"]
    print(f"{name} ours {ours['docs_per_s']:9.1f} docs/s (runs {ours['runs_docs_per_s']}; {ours['docs']} "
          f"docs, {ours['peak_memory_mib']:.0f} MiB, nDCG@10 {ours.get('nDCG@10', '-')})  best baseline "
          f"{config['dtype']}/{config['batch_size']}/{config.get('sdpa', '-')} "
          f"{base['docs_per_s']:.1f} docs/s ({base['docs']} docs, "
          f"{base['peak_memory_mib']:.0f} MiB, nDCG@10 {base.get('nDCG@10', '-')})  "
          f"speedup {row['speedup_vs_best_baseline']}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        help="model[:variant]; variant is float32, bfloat16, chunked, screened or triton")
    parser.add_argument("--baseline-docs", type=int, default=0, help="0: the whole corpus")
    parser.add_argument("--our-docs", type=int, default=0, help="0: the whole corpus")
    parser.add_argument("--decoder-docs", type=int, default=64, help="documents for the SmolLM2 row")
    parser.add_argument("--decoder-top-k", type=int, default=None, help="prune SmolLM2 doc vectors")
    parser.add_argument("--repeats", type=int, default=1,
                        help="fresh processes timing ours (the median is reported)")
    parser.add_argument("--warmup-docs", type=int, default=None,
                        help=f"marked texts each process warms up on (default: {POOL_MIN_TEXTS} on cuda, "
                             "enough to start sparsa's tokenizer processes; 32 on cpu)")
    parser.add_argument("--baseline-dtypes", nargs="+", choices=("float32", "bfloat16", "float16"),
                        help="default: all three on cuda; float32 on cpu (+ bfloat16 with native bf16)")
    parser.add_argument("--baseline-batch-sizes", nargs="+", type=int, default=[32, 64, 128, 256])
    parser.add_argument("--dataset", default=str(load_settings().data_dir / "scifact"))
    parser.add_argument("--name", default="encoding")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--tokenize-only", action="store_true", help="time tokenisation only, no encoding")
    args = parser.parse_args()
    args.warmup_docs = args.warmup_docs if args.warmup_docs is not None else (
        POOL_MIN_TEXTS if args.device == "cuda" else 32)
    args.baseline_dtypes = args.baseline_dtypes or default_baseline_dtypes(args.device)

    data = load_dataset(args.dataset)
    n_texts = min(args.our_docs or len(data.corpus), len(data.corpus))
    rows, sweeps = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_encoding_") as folder:
        jobs = Jobs(args, data, Path(folder))
        for spec in args.models:
            model, _, variant = spec.partition(":")
            if model not in MODELS:
                parser.error(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
            rows.append(bench_model(model, variant or "default", jobs, n_texts, sweeps))
            print_row(rows[-1], args.tokenize_only)
            path = write_results(args.name, _payload(args, data, jobs.hardware, rows), PACKAGES)
    print(f"wrote {path}")


def default_baseline_dtypes(device: str) -> list[str]:
    if device == "cuda":
        return ["float32", "bfloat16", "float16"]
    from sparsa.retrieval.splade_pooling import cpu_has_fast_bf16

    return ["float32", "bfloat16"] if cpu_has_fast_bf16() else ["float32"]


def _payload(args, data, hardware: dict, rows: list[dict]) -> dict:
    note = "smollm2 rows may use random weights (throughput only): see 'weights'"
    if args.device == "cpu":
        note = "CPU timings on a shared 2-core machine (other jobs active, see load averages): noisy."
    payload = {"dataset": data.name, "corpus_docs": len(data.corpus), "hardware_detail": hardware,
               "texts": f"unseen: real {data.name} corpus texts, each timed pass the first and only pass "
                        f"over them in a fresh process; warm-up on marked copies (every word + "
                        f"'{WARMUP_MARK}')",
               "timed": "end to end as an indexing job: texts in, vectors on the host out (tokenisation "
                        "included); model load excluded (load_seconds), warm-up excluded (warmup_seconds)",
               "note": note, "rows": rows}
    weights_note = os.environ.get("SPARSA_BENCH_WEIGHTS_NOTE")
    if weights_note:
        payload["weights"] = weights_note
    return payload


if __name__ == "__main__":
    main()
