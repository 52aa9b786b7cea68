"""Encoding throughput on the SciFact corpus: sparsa's encoders against sentence-transformers.

    python bench/bench_encoding.py [--device cpu|cuda] [--models splade-tiny minilm-l6 smollm2]
        [--baseline-docs N] [--our-docs N] [--decoder-docs N] [--name encoding] [--tokenize-only]

For each model, both implementations encode the same SciFact texts (title + abstract); reported:
docs/s (model load excluded, after a short warm-up), peak memory (process RSS on CPU, allocated
CUDA memory on GPU), and SciFact test nDCG@10 / R@100 from an exact sparse (scipy) or dense
(numpy) dot-product search over whatever the run encoded. ``--baseline-docs N`` times the baseline
on the first N documents only (then its nDCG is not computed); the JSON says which texts each row
used. The SmolLM2 (Mistral-SPLADE) row has no sentence-transformers counterpart: its baseline is the
same encoder with full-logits reference pooling. Tokenisation alone is timed on the encoder's own
path (``tokenize_only_docs_per_s``) and as the plain Hugging Face call it replaced
(``tokenize_plain_hf_call_docs_per_s``). Prints a table and writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import write_results

from sparsa.config import load_settings
from sparsa.data import load_dataset
from sparsa.models import resolve_model
from sparsa.types import Hit, Run, SparseVector

PACKAGES = ("torch", "transformers", "sentence-transformers", "triton", "tokenizers", "scipy")
MODELS = ("splade-tiny", "minilm-l6", "smollm2")


class PeakMemory:
    """Peak memory while the block runs: CUDA allocations on GPU, else RSS sampled every 10 ms (MiB)."""

    def __init__(self, device: str):
        self.device, self.peak_mib, self._stop = device, 0.0, threading.Event()

    @staticmethod
    def _rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_mib = max(self.peak_mib, self._rss_mib())

    def __enter__(self) -> Self:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak_mib = self._rss_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()


def timed(device: str, fn: Callable[[], object]) -> tuple[object, float, float]:
    """``(result, seconds, peak MiB)`` of one call."""
    import torch

    gc.collect()
    with PeakMemory(device) as mem:
        started = time.perf_counter()
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return result, seconds, mem.peak_mib


def sparse_matrix(vectors: Sequence[SparseVector], vocab: int):
    from scipy.sparse import csr_matrix

    indptr = np.cumsum([0] + [v.nnz for v in vectors])
    indices = np.concatenate([v.indices for v in vectors]) if vectors else np.zeros(0, np.int32)
    values = np.concatenate([v.values for v in vectors]) if vectors else np.zeros(0, np.float32)
    return csr_matrix((values, indices, indptr), shape=(len(vectors), vocab))


def exact_run(query_ids: list[str], doc_ids: list[str], scores: np.ndarray, k: int = 100) -> Run:
    """Top-``k`` hits per query from a dense ``[queries, docs]`` score matrix."""
    top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    hits = {qid: [Hit(doc_ids[j], float(scores[i, j])) for j in top[i]] for i, qid in enumerate(query_ids)}
    return Run(hits)


def evaluate(run: Run, qrels) -> dict[str, float]:
    import ir_measures
    from ir_measures import R, nDCG

    agg = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], qrels.to_ir_measures(), run.to_ir_measures())
    return {"nDCG@10": round(agg[nDCG @ 10], 4), "R@100": round(agg[R @ 100], 4)}


def score(kind: str, docs, queries, vocab: int) -> np.ndarray:
    if kind == "sparse":
        return (sparse_matrix(queries, vocab) @ sparse_matrix(docs, vocab).T).toarray()
    return np.asarray(queries) @ np.asarray(docs).T


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


def to_sparse_list(encoded) -> list[SparseVector]:
    """sentence-transformers' sparse (or dense) tensor rows as SparseVectors."""
    dense = (encoded.to_dense() if encoded.is_sparse else encoded).float().cpu().numpy()
    return [SparseVector.from_dense(row) for row in dense]


def build(model: str, device: str, variant: str, decoder_top_k: int | None) -> tuple:
    """``(kind, ours(texts, is_query), baseline(texts, is_query), vocab, baseline_name, tokenizers)``."""
    from sparsa.retrieval.dense import DenseConfig, DenseEncoder
    from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder

    dtype = {"float32": "float32", "bfloat16": "bfloat16"}.get(variant, "auto")
    pooling = variant if variant in ("chunked", "screened", "triton") else "auto"
    if model == "minilm-l6":
        ours = DenseEncoder(DenseConfig(device=device, dtype=dtype))
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(resolve_model(model), device=device)
        baseline = lambda texts, q: st.encode(texts, batch_size=64)
        return ("dense", lambda texts, q: ours.encode(texts), baseline, ours.dim, "sentence-transformers 64",
                tokenizers_of(ours))
    if model == "splade-tiny":
        enc = SpladeEncoder(SpladeConfig(device=device, dtype=dtype, pooling=pooling))
        from sentence_transformers import SparseEncoder

        st = SparseEncoder(resolve_model(model), device=device)
        def baseline(texts, q):
            return to_sparse_list(st.encode(texts, batch_size=32, convert_to_tensor=True))

        return ("sparse", lambda texts, q: enc.encode(texts), baseline, enc.vocab_size,
                "sentence-transformers 32", tokenizers_of(enc))
    config = SpladeConfig.mistral_splade(device=device, dtype=dtype, pooling=pooling, doc_top_k=decoder_top_k)
    enc = SpladeEncoder(config)
    ref = SpladeEncoder(config.__class__(**{**_fields(config), "pooling": "reference"}))
    return ("sparse", lambda texts, q: enc.encode_documents(texts),
            lambda texts, q: ref.encode_documents(texts, batch_size=8), enc.vocab_size,
            "same encoder, full-logits reference pooling, batch 8", tokenizers_of(enc))


def tokenizers_of(encoder) -> tuple[Callable, Callable]:
    """The encoder's own tokenisation path (its blocks, tokenised ahead, drained), and the plain
    Hugging Face call with the same ids that the encoders used before (the 'before' figure)."""
    ids = encoder._token_ids

    def ours(texts: list[str]) -> int:
        return sum(len(block) for _, block in ids.blocks(texts, encoder.device.type))

    def plain(texts: list[str]) -> list[list[int]]:
        return encoder.tokenizer(texts, truncation=True, max_length=ids.max_length,
                                 add_special_tokens=ids.add_special_tokens, return_attention_mask=False,
                                 return_token_type_ids=False)["input_ids"]

    return ours, plain


def _fields(config) -> dict:
    from dataclasses import fields

    return {f.name: getattr(config, f.name) for f in fields(config)}


def bench_model(model: str, variant: str, args, data, texts: list[str]) -> dict:
    kind, ours, baseline, vocab, baseline_name, (tokenize, tokenize_plain) = build(
        model, args.device, variant, args.decoder_top_k)
    n_ours = len(texts) if model != "smollm2" else min(len(texts), args.decoder_docs)
    n_base = args.baseline_docs or len(texts)
    n_base = min(n_base, n_ours) if model == "smollm2" else n_base
    if variant != "default":  # the default row already timed the baseline on the full corpus
        n_base = min(n_base, args.variant_baseline_docs)
    query_texts = [q.text for q in data.queries]
    ours(texts[:32], False)  # warm-up: allocator, kernels, autotune
    row: dict = {"model": model, "variant": variant, "kind": kind}
    # Tokenisation alone, twice each, alternating (the best of two is reported): the encoder's path,
    # and the plain Hugging Face call it replaced.
    tok = {"ours": [], "plain": []}
    for _ in range(2):
        for who, fn in (("ours", tokenize), ("plain", tokenize_plain)):
            tok[who].append(timed(args.device, lambda fn=fn: fn(texts[:n_ours]))[1])
    row["tokenize_only_docs_per_s"] = round(n_ours / min(tok["ours"]), 1)
    row["tokenize_plain_hf_call_docs_per_s"] = round(n_ours / min(tok["plain"]), 1)
    row["tokenize_docs"] = n_ours
    if args.tokenize_only:
        row["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        return row
    if model == "smollm2" and args.decoder_top_k:
        row["doc_top_k"] = args.decoder_top_k
    runs = {"ours": (ours, n_ours), "baseline": (baseline, n_base)}
    encoded = {}
    for who, (fn, n) in runs.items():
        if who == "baseline":
            fn(texts[:16], False)
        repeats = args.repeats if who == "ours" else 1
        timings = [timed(args.device, lambda fn=fn, n=n: fn(texts[:n], False)) for _ in range(repeats)]
        docs, seconds, peak = timings[-1]
        load = [round(x, 2) for x in os.getloadavg()]
        encoded[who] = docs
        entry = {"docs": n, "seconds": round(seconds, 3), "docs_per_s": round(n / seconds, 1),
                 "peak_memory_mib": round(peak, 1), "texts": f"first {n} SciFact corpus documents",
                 "load_average_after": load}
        if repeats > 1:
            entry["first_call_seconds"] = round(timings[0][1], 3)
        if who == "baseline":
            entry["implementation"] = baseline_name
        if n == len(data.corpus) and model != "smollm2":
            query_vecs = fn(query_texts, True)
            run = exact_run([q.id for q in data.queries], [d.id for d in data.corpus.documents],
                            score(kind, docs, query_vecs, vocab))
            entry.update(evaluate(run, data.qrels))
        row[who] = entry
    shared = min(n_ours, n_base)
    row["agreement_on_shared_docs"] = {"docs": shared, **agreement(kind, encoded["ours"][:shared],
                                                                  encoded["baseline"][:shared])}
    row["speedup"] = round(row["ours"]["docs_per_s"] / row["baseline"]["docs_per_s"], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        help="model[:variant]; variant is float32, bfloat16, chunked, screened or triton")
    parser.add_argument("--baseline-docs", type=int, default=0, help="0: the whole corpus")
    parser.add_argument("--our-docs", type=int, default=0, help="0: the whole corpus")
    parser.add_argument("--decoder-docs", type=int, default=64, help="documents for the SmolLM2 row")
    parser.add_argument("--variant-baseline-docs", type=int, default=512,
                        help="baseline documents for non-default variant rows")
    parser.add_argument("--decoder-top-k", type=int, default=None, help="prune SmolLM2 doc vectors")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of ours (the last is reported)")
    parser.add_argument("--dataset", default=str(load_settings().data_dir / "scifact"))
    parser.add_argument("--name", default="encoding")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--tokenize-only", action="store_true", help="time tokenisation only, no encoding")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    texts = [d.full_text for d in data.corpus.documents]
    texts = texts[: args.our_docs] if args.our_docs else texts
    hardware = {"device": args.device, "torch_threads": torch.get_num_threads(),
                "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    rows = []
    for spec in args.models:
        model, _, variant = spec.partition(":")
        if model not in MODELS:
            parser.error(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
        rows.append(bench_model(model, variant or "default", args, data, texts))
        r = rows[-1]
        print(f"{model:12} {variant or 'default':9} tokenise {r['tokenize_only_docs_per_s']:9.1f} docs/s "
              f"(plain HF call {r['tokenize_plain_hf_call_docs_per_s']:.1f})", flush=True)
        if args.tokenize_only:
            write_results(args.name, _payload(args, data, hardware, rows), PACKAGES)
            continue
        print(f"{model:12} {variant or 'default':9} ours {r['ours']['docs_per_s']:9.1f} docs/s "
              f"({r['ours']['docs']} docs, {r['ours']['peak_memory_mib']:.0f} MiB, nDCG@10 "
              f"{r['ours'].get('nDCG@10', '-')})  baseline {r['baseline']['docs_per_s']:8.1f} docs/s "
              f"({r['baseline']['docs']} docs, {r['baseline']['peak_memory_mib']:.0f} MiB, nDCG@10 "
              f"{r['baseline'].get('nDCG@10', '-')})  speedup {r['speedup']}x", flush=True)
        write_results(args.name, _payload(args, data, hardware, rows), PACKAGES)  # partial results survive
    path = write_results(args.name, _payload(args, data, hardware, rows), PACKAGES)
    print(f"wrote {path}")


def _payload(args, data, hardware: dict, rows: list[dict]) -> dict:
    note = "smollm2 rows may use random weights (throughput only): see 'weights'"
    if args.device == "cpu":
        note = "CPU timings on a shared 2-core machine (other jobs active, see load averages): noisy."
    payload = {"dataset": data.name, "corpus_docs": len(data.corpus), "hardware_detail": hardware,
               "note": note, "rows": rows}
    weights_note = os.environ.get("SPARSA_BENCH_WEIGHTS_NOTE")
    if weights_note:
        payload["weights"] = weights_note
    return payload


if __name__ == "__main__":
    main()
