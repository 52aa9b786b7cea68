"""SPLADE and dense index jobs on Ray over 1, 2, ... GPUs of one host: docs/s, scaling, where the time goes.

    python bench/bench_ray_indexing.py --docs 500000 --gpus 1 2            # on nvidia-h100-x2 (issue 27)
    bash bench/gpu_ray_indexing.sh                                         # the same, packaged for it
    python bench/bench_ray_indexing.py --device cpu --docs 2000 --gpus 1 --results /tmp/ray.json  # check

The corpus: SciFact's 5,183 documents repeated to ``--docs`` documents, every copy with a unique id and its
copy number appended to its title, so no text repeats verbatim (the model has seen none of them; their
words repeat every 5,183 documents). Each (kind, GPU count) is one job as ``sparsa index --ray`` runs it:
``build_index_job(kind, corpus, out, ray=RayOptions(actors=N))`` (splade: splade-tiny, exact backend;
dense: minilm-l6, flat), in a fresh local Ray instance started with N GPUs (``ray.init(num_gpus=N)``), from
the corpus in memory to the published index folder. docs/s = documents / job seconds; scaling efficiency =
docs/s at N / (N x docs/s at 1 GPU). ``actor_docs_per_s``: the sum over actors of documents / busy seconds,
what the actors would give if never idle (its efficiency: do actors slow each other down, e.g. on the host).

Where the time goes, from the job's ``RayEncoder.stats`` (made by ``job_encoder``) and the job's clock:
``before_s`` (the driver's local encoder, the job fingerprint over every text, the Arrow table),
``first_result_s`` (Ray Data plans, actors start and load the model, the first call of ``--batch-size``
documents), ``actor_busy_s`` (per actor: seconds inside its calls: tokenising in the actor's thread,
host->device copies, the model, read-back, packing; ``busy_share`` = busy / stream seconds),
``driver_wait_s`` (the driver blocked on Ray: object transfer, Arrow->numpy, or actors not ready),
``driver_shard_s`` (the driver's own work between results: cutting shards, dense shard writes; SPLADE
shard writes run in a background thread), ``after_s`` (after the last result: the last shard writes, the
vectors, the backend, the manifest with checksums). ``tokenise_docs_per_s``: the model's tokenizer over
20,000 of these texts in one process, as an actor tokenises (no tokenizer processes inside a Ray worker);
below the per-GPU docs/s, tokenising caps the actors. With ``--device cpu`` the actors are CPU actors
(one CPU each): a check that the bench runs, not a figure. Writes bench/results/ray_indexing.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, write_results

from sparsa.types import Corpus, Document

PACKAGES = ("ray", "torch", "transformers", "tokenizers", "pyarrow")
MODELS = {"splade": "splade-tiny", "dense": "minilm-l6"}
TOKENISE_SAMPLE = 20_000
CORPUS_NOTE = ("SciFact's 5,183 documents repeated with unique ids, each copy's number appended to its title "
               "(no text repeats verbatim; the words repeat every 5,183 documents)")


def repeated_scifact(corpus_file: Path, n: int) -> Corpus:
    from sparsa.data.beir import read_corpus

    seed = read_corpus(corpus_file).documents
    docs = []
    for i in range(n):
        copy, doc = divmod(i, len(seed))
        base = seed[doc]
        docs.append(Document(f"{base.id}-{copy}", base.text, f"{base.title} {copy}".strip()))
    return Corpus(docs)


def card_name(args) -> str:
    """The card's name; exits with a message when fewer GPUs are visible than the largest count asks."""
    if args.device == "cpu":
        return "cpu (check run: CPU actors)"
    import torch

    most, count = max(args.gpus), torch.cuda.device_count()
    if count < most:
        sys.exit(f"error: --gpus asks for {most} GPUs but torch sees {count} (CUDA_VISIBLE_DEVICES: check it "
                 "names them all); run on a machine with that many GPUs, e.g. nvidia-h100-x2")
    return " + ".join(sorted({torch.cuda.get_device_name(i) for i in range(most)}))


def tokenise_rate(kind: str, texts: list[str]) -> float:
    """Documents per second of the model's tokenizer in this process (one Python thread, as in an actor)."""
    from sparsa.registry import build_encoder

    encoder = build_encoder({"name": kind, "config": {"model": MODELS[kind], "device": "cpu"}})
    encoder._token_ids(texts[:256])  # warm: first-call set-up is not tokenising
    started = time.perf_counter()
    encoder._token_ids(texts)
    return len(texts) / (time.perf_counter() - started)


def run_job(kind: str, corpus: Corpus, gpus: int, args, work: Path) -> dict:
    """One index job on a fresh local Ray instance with ``gpus`` GPUs (CPU actors with --device cpu)."""
    import ray

    from sparsa.indexes import build_index_job, job_encoder
    from sparsa.indexes.ray_encoding import RayOptions, preserve_crash_signal_handlers

    cpu = args.device == "cpu"
    started = time.perf_counter()
    with preserve_crash_signal_handlers():
        ray.init(num_gpus=0 if cpu else gpus, num_cpus=gpus + 2 if cpu else None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False, logging_level=logging.WARNING)
    ray_init_s = time.perf_counter() - started
    out = work / f"{kind}-{gpus}"
    try:
        options = RayOptions(actors=gpus, batch_size=args.batch_size, gpus_per_actor=0.0 if cpu else 1.0)
        started = time.perf_counter()
        # The encoder build_index_job(ray=options) would make, kept here to read its stats afterwards.
        encoder = job_encoder(kind, corpus, model=MODELS[kind], device=args.device, ray=options)
        build_index_job(kind, corpus, out, encoder=encoder, show_progress=False,
                        corpus_name=f"scifact-x{len(corpus)}", replace=True,
                        **({"structure": "flat"} if kind == "dense" else {"backends": ("exact",)}))
        ended = time.perf_counter()
        stats = encoder.stats
    finally:
        with preserve_crash_signal_handlers():
            ray.shutdown()
    from sparsa.artifacts import read_manifest

    manifest = read_manifest(out, verify="size")
    index_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    shutil.rmtree(out, ignore_errors=True)
    n, job_s = len(corpus), ended - started
    stream_s = stats["finished"] - stats["started"]
    busy = stats["actor_busy_s"]
    return {
        "kind": kind, "model": MODELS[kind], "gpus": gpus, "actors": stats["actors"], "documents": n,
        "seconds": round(job_s, 2), "docs_per_s": round(n / job_s, 1),
        "actor_docs_per_s": round(sum(stats["actor_documents"][a] / busy[a] for a in busy if busy[a] > 0), 1),
        "ray_init_s": round(ray_init_s, 2),
        "before_s": round(stats["started"] - started, 2),
        "first_result_s": round(stats["first_batch_s"], 2),
        "stream_s": round(stream_s, 2),
        "driver_wait_s": round(stats["wait_s"], 2),
        "driver_shard_s": round(stats["driver_s"], 2),
        "after_s": round(ended - stats["finished"], 2),
        "actor_busy_s": [round(s, 2) for s in busy.values()],
        "actor_documents": list(stats["actor_documents"].values()),
        "busy_share": [round(s / stream_s, 3) for s in busy.values()],
        "calls": stats["calls"], "batch_size": stats["batch_size"],
        "payload_mb": round(stats["payload_bytes"] / 2**20, 1),
        "index_mb": round(index_mb, 1), "manifest_documents": manifest.get("num_documents"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=500_000, help="documents (SciFact repeated)")
    parser.add_argument("--gpus", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2],
                        help="GPU counts, comma-separated (1 is always added: the baseline)")
    parser.add_argument("--kinds", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: CPU actors, a check that the bench runs (needs --results)")
    parser.add_argument("--batch-size", type=int, default=None, help="documents per actor call "
                        "[default: RayOptions' default]")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="SciFact's corpus file [default: scifact/corpus.jsonl.gz under the data folder]")
    parser.add_argument("--work", type=Path, default=None, help="where the indexes are built (then removed)")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"write here [default: {RESULTS / 'ray_indexing.json'}; required with cpu]")
    args = parser.parse_args()
    if args.device == "cpu" and (args.results is None or args.results.resolve().parent == RESULTS.resolve()):
        parser.error("--device cpu is a check run: give --results outside bench/results")
    if min(args.gpus) < 1:
        parser.error("--gpus: counts must be >= 1")
    args.gpus = sorted(set(args.gpus) | {1})
    from sparsa.indexes.ray_encoding import RayOptions

    args.batch_size = args.batch_size or RayOptions().batch_size
    card = card_name(args)
    from sparsa.config import load_settings

    started = time.perf_counter()
    corpus_file = args.corpus or load_settings().data_dir / "scifact" / "corpus.jsonl.gz"
    corpus = repeated_scifact(corpus_file, args.docs)
    texts = [d.full_text for d in corpus.documents]
    print(f"corpus: {len(corpus):,} documents ({CORPUS_NOTE}), made in "
          f"{time.perf_counter() - started:.1f} s; card: {card}", flush=True)
    rows, tokenise = [], {}
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)  # a folder named for the run need not exist yet
    work = Path(tempfile.mkdtemp(prefix="ray_indexing_", dir=args.work))
    try:
        for kind in args.kinds:
            tokenise[kind] = round(tokenise_rate(kind, texts[:TOKENISE_SAMPLE]), 1)
            print(f"{kind}: tokenising {tokenise[kind]:,.0f} docs/s in one process", flush=True)
            for gpus in args.gpus:
                row = run_job(kind, corpus, gpus, args, work)
                row["tokenise_docs_per_s"] = tokenise[kind]
                rows.append(row)
                save(rows, corpus, card, args)
                print(f"{kind} {gpus} {'CPU actor' if args.device == 'cpu' else 'GPU'}(s): "
                      f"{row['docs_per_s']:,.0f} docs/s ({row['seconds']} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = save(rows, corpus, card, args)
    unit = "CPU actors" if args.device == "cpu" else "GPUs"
    print(f"\n{'kind':<7}{unit:>10}{'docs/s':>10}{'eff':>7}{'actors':>9}{'eff':>7}{'first':>7}"
          f"{'busy share':>13}{'wait':>7}{'shard':>7}{'after':>7}{'tok/s':>9}")
    for r in rows:
        print(f"{r['kind']:<7}{r['gpus']:>10}{r['docs_per_s']:>10,.0f}{r['efficiency']:>7.2f}"
              f"{r['actor_docs_per_s']:>9,.0f}{r['actor_efficiency']:>7.2f}"
              f"{r['first_result_s']:>7.1f}{'/'.join(f'{s:.2f}' for s in r['busy_share']):>13}"
              f"{r['driver_wait_s']:>7.1f}{r['driver_shard_s']:>7.1f}{r['after_s']:>7.1f}"
              f"{r['tokenise_docs_per_s']:>9,.0f}")
    print(f"wrote {path}")


def save(rows: list[dict], corpus: Corpus, card: str, args) -> Path:
    """The record with every row so far (written after each job: a run cut short keeps its rows)."""
    for row in rows:
        base = next(r for r in rows if r["kind"] == row["kind"] and r["gpus"] == 1)
        row["efficiency"] = round(row["docs_per_s"] / (row["gpus"] * base["docs_per_s"]), 3)
        row["actor_efficiency"] = round(row["actor_docs_per_s"] / (row["gpus"] * base["actor_docs_per_s"]), 3)
    payload = {
        "corpus": CORPUS_NOTE, "documents": len(corpus), "card": card, "device": args.device,
        "gpu_counts": args.gpus, "kinds": args.kinds,
        "method": "build_index_job(kind, corpus, out, ray=RayOptions(actors=N)) per kind and GPU count, each "
                  "in a fresh local Ray instance (ray.init(num_gpus=N)); corpus in memory -> published index",
        "rows": rows,
    }
    path = write_results("ray_indexing", payload, packages=PACKAGES, path=args.results,
                         gpu=None if args.device == "cpu" else card)
    record = json.loads(path.read_text())
    if not record["meta"]["git_commit"] and os.environ.get("SPARSA_BENCH_COMMIT"):
        # no git on the GPU machine: the commit the staged wheel was built from
        record["meta"]["git_commit"] = os.environ["SPARSA_BENCH_COMMIT"]
        path.write_text(json.dumps(record, indent=2) + "\n")
    return path


if __name__ == "__main__":
    main()
