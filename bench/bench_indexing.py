"""SPLADE indexing end to end on unseen texts (texts in, index written) against sentence-transformers.

    python bench/bench_indexing.py --corpus FILE [FILE ...] [--device cuda] [--st-docs 4096]
        [--st-dtypes float32 bfloat16 float16] [--st-batch-sizes 64 128 256] [--legacy-site DIR]
        [--cli] [--ours-max-tokens N ...] [--budget-rounds R] [--name indexing_gpu]
    python bench/bench_indexing.py prepare --out FILE [--passages 100000]   # the RealTime QA passages

What is timed (issue 22): an indexing job as ``sparsa index`` runs it, from the corpus in memory to the
published index folder: tokenisation, encoding, CSR shards (checkpoints), the vectors, the manifest with
every file's sha256, the rename into place. Model load and reading the corpus file are reported apart
(``load_seconds``, ``corpus_read_seconds``); with ``--cli`` the whole ``sparsa index`` command is also timed
from the shell (interpreter start, model load and corpus read included). Each corpus is indexed by a fresh
process, its first and only pass over those texts; before it the process warms up (CUDA, kernels, the
tokenizer processes) by indexing 2,048 marked copies (every word + ``zq``: no word shared with the corpus,
so no word cache is primed). A second fresh process times the parts on the two halves of the corpus:
tokenising and batching alone (first half) and encoding to host CSR rows without writing (second half), then
profiles the encoding of up to 20,000 texts of the first half (``torch.profiler``: the GPU's busy share, the
largest host and device entries: where the time goes).

Baseline: sentence-transformers' ``SparseEncoder`` over the same model, every dtype x batch size x SDPA
(torch's choice, or without cuDNN) configuration in one fresh process (warm-up on marked copies, then the
first ``--st-docs`` texts), timed to vectors on the host only (no index written: generous to it); the
fastest is ``baseline``.
``--legacy-site``: a folder with the wheel of an earlier sparsa installed (``pip install --target``):
its index build is timed the same way (``before``). Writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ("torch", "transformers", "sentence-transformers", "triton", "tokenizers")
WARMUP_DOCS = 2048
_WORD = re.compile(r"[^\W_]+")


def marked(texts: list[str], n: int) -> list[str]:
    """``n`` texts (cycled) with ``zq`` after every word: no word in common with the corpus."""
    return [_WORD.sub(lambda m: m.group() + "zq", t) for t in itertools.islice(itertools.cycle(texts), n)]


def prepare(out: Path, passages: int) -> None:
    """RealTime QA's news articles as 100-word passages (DPR-style), articles in id order; BEIR JSONL."""
    import gzip

    from sparsa.config import load_settings
    from sparsa.data.realtimeqa import load_realtimeqa

    data = load_realtimeqa(load_settings().data_dir / "realtimeqa")
    written = 0
    with gzip.open(out, "wt") if out.suffix == ".gz" else open(out, "w") as f:
        for article_id in sorted(data.articles):
            article = data.articles[article_id]
            words = article.text.split()
            for k in range(0, len(words), 100):
                if written == passages:
                    return
                f.write(json.dumps({"_id": f"{article_id}#{k // 100}", "title": article.title,
                                    "text": " ".join(words[k : k + 100])}) + "\n")
                written += 1


def job_ours(spec: dict) -> dict:
    """Index the corpus once (after a marked warm-up); figures of the build."""
    import torch

    from sparsa.data import load_corpus
    from sparsa.indexes import build_index
    from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder
    from sparsa.types import Corpus, Document

    started = time.perf_counter()
    corpus = load_corpus(spec["corpus"])
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    encoder = SpladeEncoder(SpladeConfig(device=spec["device"], max_tokens=spec.get("max_tokens")))
    load_s = time.perf_counter() - started
    texts = [d.full_text for d in corpus.documents]
    warm = Corpus(Document(f"w{i}", t) for i, t in enumerate(marked(texts, spec["warmup_docs"])))
    threads = {} if spec.get("threads") is None else {"threads": spec["threads"]}
    with tempfile.TemporaryDirectory(dir=spec["work"]) as folder:
        started = time.perf_counter()
        build_index("splade", warm, Path(folder) / "warm", encoder=encoder, **threads)
        warm_s = time.perf_counter() - started
        started = time.perf_counter()
        out = build_index("splade", corpus, Path(folder) / "index", encoder=encoder, **threads)
        seconds = time.perf_counter() - started
        manifest = json.loads((out / "sparsa.json").read_text())
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        if spec.get("keep"):
            (out / "vectors").rename(spec["keep"])  # for comparing two builds' vectors, after timing
    return {"docs": len(corpus), "seconds": round(seconds, 3), "docs_per_s": round(len(corpus) / seconds, 1),
            "encode_seconds_in_manifest": manifest["encode_seconds"], "nnz_per_doc": round(
                manifest["nnz"] / len(corpus), 1), "index_mib": round(size / 2**20, 1),
            "load_seconds": round(load_s, 2), "corpus_read_seconds": round(read_s, 2),
            "warmup_docs": spec["warmup_docs"], "warmup_seconds": round(warm_s, 2),
            "torch_threads": torch.get_num_threads(),
            "config": {"dtype": str(encoder.dtype).removeprefix("torch."), "pooling": encoder.pooling,
                       "max_tokens": encoder.config.max_tokens, "threads": spec.get("threads")}}


def job_parts(spec: dict) -> dict:
    """Tokenising + batching alone on the first half, encoding to host rows (no writing) on the second."""
    import numpy as np

    from sparsa.data import load_corpus
    from sparsa.retrieval.splade import _TOKENS_PER_BATCH, SpladeConfig, SpladeEncoder
    from sparsa.retrieval.splade_stream import layout_of
    from sparsa.token_batches import pool_workers, token_batches

    texts = [d.full_text for d in load_corpus(spec["corpus"]).documents]
    encoder = SpladeEncoder(SpladeConfig(device=spec["device"]))
    for _ in encoder.stream(marked(texts, spec["warmup_docs"])):
        pass
    half = len(texts) // 2
    budget = _TOKENS_PER_BATCH[encoder.device.type]
    tokens, padded, batches = 0, 0, 0
    started = time.perf_counter()
    for _, _, chunk in token_batches(encoder._token_ids, texts[:half], layout_of(encoder), None, budget,
                                     encoder.device.type):
        for batch in chunk:
            tokens += int(batch.ranges[0].sum())
            padded += batch.ids.size
            batches += 1
    tokenize_s = time.perf_counter() - started
    started = time.perf_counter()
    nnz = sum(rows.nnz for _, rows in encoder.stream(texts[half:]))
    encode_s = time.perf_counter() - started
    profile = profiled_encode(encoder, texts[:min(half, 20_000)]) if encoder.device.type == "cuda" else None
    return {"profile": profile,
            "tokenize_batch_docs_per_s": round(half / tokenize_s, 1), "tokenize_docs": half,
            "tokenizer_processes": pool_workers(None), "mean_tokens_per_doc": round(tokens / half, 1),
            "padding_fraction": round(1 - tokens / padded, 3), "mean_batch_docs": round(half / batches, 1),
            "encode_to_host_docs_per_s": round((len(texts) - half) / encode_s, 1),
            "encode_docs": len(texts) - half,
            "nnz_per_doc": round(float(np.float64(nnz) / (len(texts) - half)), 1)}


def profiled_encode(encoder, texts: list[str], top: int = 8) -> dict:
    """Where the encoding time goes (texts already tokenised once: the host's tokenizer caches are warm):
    wall time, the GPU's busy time (sum of kernel times), and the largest host and device entries."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = [ProfilerActivity.CUDA] if encoder.device.type == "cuda" else []
    with profile(activities=[ProfilerActivity.CPU, *cuda]) as prof:
        started = time.perf_counter()
        for _ in encoder.stream(texts):
            pass
        if encoder.device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
    events = prof.key_averages()

    def device_ms(e) -> float:
        return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) / 1000

    busy = sum(device_ms(e) for e in events)
    by_device = sorted(events, key=device_ms, reverse=True)[:top]
    by_host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"docs": len(texts), "wall_s": round(wall, 3), "gpu_busy_s": round(busy / 1000, 3),
            "gpu_busy_share": round(busy / 1000 / wall, 3),
            "top_device_ms": {e.key[:80]: round(device_ms(e), 1) for e in by_device},
            "top_host_self_ms": {e.key[:80]: round(e.self_cpu_time_total / 1000, 1) for e in by_host}}


def job_st(spec: dict) -> dict:
    """sentence-transformers' SparseEncoder in every configuration, vectors to the host."""
    import torch
    from sentence_transformers import SparseEncoder

    from sparsa.data import load_corpus
    from sparsa.models import resolve_model
    from sparsa.sdpa_backends import SDPA_SETTINGS, sdpa_setting

    texts = [d.full_text for d in load_corpus(spec["corpus"]).documents][: spec["docs"]]
    warm = marked(texts, min(512, spec["warmup_docs"]))
    sweep = []
    for dtype in spec["dtypes"]:
        model = SparseEncoder(resolve_model("splade-tiny"), device=spec["device"]).to(getattr(torch, dtype))
        # SDPA as torch picks it, and without cuDNN (a user can switch it off as our encoders do)
        for size, sdpa in itertools.product(spec["batch_sizes"], SDPA_SETTINGS):
            encode = lambda batch, size=size, model=model: model.encode(
                batch, batch_size=size, convert_to_tensor=True, show_progress_bar=False).cpu()
            with sdpa_setting(sdpa, spec["device"]):
                encode(warm)
                if spec["device"] == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                encode(texts)
                seconds = time.perf_counter() - started
            sweep.append({"config": {"dtype": dtype, "batch_size": size, "sdpa": sdpa}, "docs": len(texts),
                          "seconds": round(seconds, 3), "docs_per_s": round(len(texts) / seconds, 1)})
            print(f"  sentence-transformers {dtype}/{size}/{sdpa}: {sweep[-1]['docs_per_s']:,.0f} docs/s",
                  flush=True)
        del model
        torch.cuda.empty_cache()
    return {"sweep": sweep}


def agreement(ours: str, before: str) -> dict:
    """How the two builds' stored vectors compare: same doc ids, same terms per row, weight differences."""
    import shutil

    import numpy as np

    from sparsa.errors import IndexCorruptError
    from sparsa.indexes.sparse_matrix import SparseMatrix

    try:
        a, b = SparseMatrix.load(Path(ours)), SparseMatrix.load(Path(before))
    except (OSError, IndexCorruptError) as exc:  # a failed build leaves nothing to compare
        return {"error": str(exc)}
    finally:
        for folder in (ours, before):
            shutil.rmtree(folder, ignore_errors=True)
    same_rows = np.diff(a.indptr) == np.diff(b.indptr)
    same_terms = bool(same_rows.all()) and np.array_equal(a.indices, b.indices)
    rows_same_terms = sum(np.array_equal(a.row(i).indices, b.row(i).indices) for i in range(len(a)))
    diff = float(np.abs(a.values - b.values).max()) if same_terms and a.nnz else None
    return {"same_doc_ids": a.doc_ids == b.doc_ids,
            "rows_with_same_terms": round(rows_same_terms / len(a), 4), "all_terms_same": same_terms,
            "max_abs_weight_diff": diff,
            "nnz_ours_before": [a.nnz, b.nnz]}


def budget_rounds(spec: dict, budgets: list[int | None], rounds: int) -> list[dict]:
    """The job (a fresh process each) at every token budget (None: the encoder's default), ``rounds`` times,
    each round starting one budget later than the last: a host's drift and the first run's cold start fall
    on every budget alike, which one run per budget in a fixed order cannot separate from the budget."""
    rates: dict[int | None, list[float]] = {budget: [] for budget in budgets}
    for round_ in range(rounds):
        shift = round_ % len(budgets)
        for budget in budgets[shift:] + budgets[:shift]:
            result = run_job("ours", {**spec, "max_tokens": budget})
            if "docs_per_s" in result:
                rates[budget].append(result["docs_per_s"])
    return [{"max_tokens": budget if budget is not None else "default", "docs_per_s": values,
             "median": statistics.median(values) if values else None}
            for budget, values in rates.items()]


def run_job(kind: str, spec: dict, site: str | None = None) -> dict:
    """The job in a fresh Python process (``site``: import sparsa from there instead)."""
    env = dict(os.environ)
    if site:
        env["PYTHONPATH"] = site + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        command = [sys.executable, __file__, "job", kind, json.dumps({**spec, "out": out.name})]
        code = subprocess.run(command, env=env, check=False).returncode
        if code:
            return {"error": f"{kind} job exited with code {code}"}
        return json.loads(Path(out.name).read_text())


def time_cli(corpus: str, device: str, work: str) -> dict:
    """``sparsa index`` from the shell, start to exit."""
    out = Path(work) / "cli-index"
    command = [sys.executable, "-m", "sparsa", "index", "--corpus", corpus, "--kind", "splade", "--device",
               device, "--out", str(out), "--replace"]
    started = time.perf_counter()
    code = subprocess.run(command, check=False).returncode
    return {"command": "sparsa index --corpus FILE --kind splade --device " + device, "exit_code": code,
            "wall_seconds": round(time.perf_counter() - started, 2)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "job":
        kind, spec = sys.argv[2], json.loads(sys.argv[3])
        result = {"ours": job_ours, "parts": job_parts, "st": job_st}[kind](spec)
        Path(spec["out"]).write_text(json.dumps(result))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "prepare":
        parser = argparse.ArgumentParser()
        parser.add_argument("prepare")
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--passages", type=int, default=100_000)
        args = parser.parse_args()
        prepare(args.out, args.passages)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="+", required=True, help="BEIR corpus JSONL files (name=path)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--st-docs", type=int, default=4096)
    parser.add_argument("--st-dtypes", nargs="+", default=["float32", "bfloat16", "float16"])
    parser.add_argument("--st-batch-sizes", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--legacy-site", default=None)
    parser.add_argument("--legacy-note", default="")
    parser.add_argument("--cli", action="store_true")
    parser.add_argument("--light-after-first", action="store_true",
                        help="rows after the first: no parts job, the last --st-batch-sizes only")
    parser.add_argument("--ours-max-tokens", nargs="*", type=int, default=[],
                        help="first corpus only: the job again at each token budget per batch ('ours_sweep')")
    parser.add_argument("--budget-rounds", type=int, default=0,
                        help="with --ours-max-tokens: instead of one run each, ROUNDS runs of the default "
                             "and of each budget, the order rotated every round ('budget_rounds', medians)")
    parser.add_argument("--warmup-docs", type=int, default=WARMUP_DOCS)
    parser.add_argument("--name", default="indexing")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from common import write_results

    rows, gpu = [], None
    with tempfile.TemporaryDirectory(prefix="bench_indexing_") as work:
        for entry in args.corpus:
            name, _, path = entry.rpartition("=")
            spec = {"corpus": path, "device": args.device, "work": work, "warmup_docs": args.warmup_docs}
            row = {"model": "splade-tiny", "corpus": name or Path(path).name}
            kept = (f"{work}/ours{len(rows)}", f"{work}/before{len(rows)}")
            row["ours"] = run_job("ours", {**spec, "keep": kept[0]})
            print(f"{row['corpus']}: ours {row['ours']}", flush=True)
            light = args.light_after_first and rows
            if args.ours_max_tokens and args.budget_rounds and not rows:
                row["budget_rounds"] = budget_rounds(spec, [None, *args.ours_max_tokens], args.budget_rounds)
                print(f"{row['corpus']}: budget rounds {row['budget_rounds']}", flush=True)
            elif args.ours_max_tokens and not rows:  # is the default token budget per batch the fastest?
                row["ours_sweep"] = [run_job("ours", {**spec, "max_tokens": budget})
                                     for budget in args.ours_max_tokens]
                for swept in row["ours_sweep"]:
                    print(f"{row['corpus']}: ours {swept.get('config')} {swept.get('docs_per_s')}")
            if not light:
                row["parts"] = run_job("parts", spec)
                print(f"{row['corpus']}: parts {row['parts']}", flush=True)
            if args.legacy_site:
                row["before"] = {**run_job("ours", {**spec, "keep": kept[1]}, args.legacy_site),
                                 "what": args.legacy_note}
                print(f"{row['corpus']}: before {row['before']}", flush=True)
                row["agreement_with_before"] = agreement(*kept)
                print(f"{row['corpus']}: agreement {row['agreement_with_before']}", flush=True)
            if args.cli:
                row["cli"] = time_cli(path, args.device, work)
                print(f"{row['corpus']}: cli {row['cli']}", flush=True)
            st = run_job("st", {**spec, "docs": args.st_docs, "dtypes": args.st_dtypes,
                                "batch_sizes": args.st_batch_sizes[-1:] if light else args.st_batch_sizes})
            sweep = st.get("sweep", [])
            row["baseline_sweep"] = sweep or st
            if sweep and "docs_per_s" in row["ours"]:
                best = max(sweep, key=lambda r: r["docs_per_s"])
                row["baseline_config"] = best["config"]
                row["baseline"] = {**best, "implementation": "sentence-transformers SparseEncoder",
                                   "timed": f"first {args.st_docs} texts to vectors on the host, no index"}
                row["speedup_vs_best_baseline"] = round(row["ours"]["docs_per_s"] / best["docs_per_s"], 2)
            rows.append(row)
            if gpu is None and args.device == "cuda":
                import torch

                gpu = torch.cuda.get_device_name()
            timed = __doc__.split("What is timed (issue 22): ")[1].split("\n\n")[0].replace("\n", " ")
            payload = {"timed": timed, "rows": rows}
            path = write_results(args.name, payload, PACKAGES, gpu=gpu,
                                 path=Path(args.name + ".json") if "/" in args.name else None)
            record = json.loads(path.read_text())
            if os.environ.get("SPARSA_BENCH_COMMIT"):
                # the commit the staged wheel was built from: what ran (the GPU machine's checkout may carry
                # no git, or a stale one)
                record["meta"]["git_commit"] = os.environ["SPARSA_BENCH_COMMIT"]
                record["meta"]["card"] = gpu
                path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
