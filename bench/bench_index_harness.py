"""What the SPLADE indexing job costs beside the encoder (issue 22): the job harness alone, on this CPU.

    python bench/bench_index_harness.py [--docs 100000] [--pool 4096] [--repeats 3] [--pace 30760]
        [--profile] [--pool-cache FILE.npz] [--before EARLIER.json] [--name index_harness_cpu]

The H100 record (``indexing_gpu.json``) has the whole job at 17.6k docs/s while the same encoder streaming
to host CSR rows runs at 30.8k. This bench times everything of ``LearnedSparseIndex.build`` except the
encoder: the resumable shard job (``indexes/shards.py:run_stream_in_shards``: its fingerprint, cutting
shards from the stream, ``SparseMatrix.from_rows``, the writer thread's saves and renames, the progress
bar), then the vectors' save, the backend build, ``clear_job``, the manifest (every file's sha256) and the
rename into place, as ``build_index`` runs them (the corpus identity included).

The encoder is a replay: ``--pool`` real RealTime QA passages (100-word passages of the news articles, as
the GPU record's corpus) are encoded once by the real splade-tiny on this CPU; their CSR rows are then
replayed, cycled, as the ``--docs`` documents of the job (unique ids, the passages' own texts), in the
blocks the GPU stream yields (``sparsa.token_batches.CHUNK_SIZES``: 64, 256, then 512 documents). All
blocks are made before the clock starts, so the replay itself costs nothing. Four modes:

- ``instant``: blocks as fast as the job takes them: the harness's own cost;
- ``paced``: blocks no faster than ``--pace`` docs/s (the H100's encode-to-host rate; the stream sleeps,
  as the GPU feeder waits on the device with the GIL released), so the writer thread's work overlaps:
  ``added_s`` is the wall time over ``docs / pace``;
- ``busy``: paced, but the stream spins in Python until each block is due (holding the GIL, as a host
  thread feeding the GPU does most of the time): the writer thread competes for the GIL;
- ``serial``: each block takes ``len / --pace`` s from when the job asks for it (a host-bound feeder: the
  H100 record's GPU is busy 47% of the time), so the job's main-thread work adds in full while the writer
  thread overlaps (the sleep lets the GIL go, as CUDA waits and most torch calls do).

``--before FILE`` keeps an earlier run's rows (``--library`` says which code ran) beside this one's.
Phases (``phases_s``) come from wrapping the build's own functions in timers (``, thread``: calls from
another thread, the shard writer's, overlapping the rest); ``--profile`` adds a cProfile
of one instant build (top entries by own and cumulative time). Machine: this host's CPU (a 2-core VM shared
with other jobs: figures are medians of ``--repeats``). ``page_probe``: this VM makes memory freed and left
idle a few seconds slow to touch again (writing the vectors' bytes right after freeing memory vs after 4 s
idle), which moves the vectors' save between about 0.07 and 0.5 s from build to build.
Writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import write_results

from sparsa.sparse_rows import SparseRows
from sparsa.types import Corpus, Document

DEFAULT_PACE = 30760.2  # indexing_gpu.json: rows[0].parts.encode_to_host_docs_per_s (H100, splade-tiny)


def passages(n: int) -> list[Document]:
    """The first ``n`` 100-word passages of RealTime QA's articles in id order (bench_indexing's corpus)."""
    from sparsa.config import load_settings
    from sparsa.data.realtimeqa import load_realtimeqa

    data = load_realtimeqa(load_settings().data_dir / "realtimeqa")
    docs: list[Document] = []
    for article_id in sorted(data.articles):
        article = data.articles[article_id]
        words = article.text.split()
        for k in range(0, len(words), 100):
            docs.append(Document(f"{article_id}#{k // 100}", " ".join(words[k : k + 100]), article.title))
            if len(docs) == n:
                return docs
    return docs


def encode_pool(docs: list[Document], cache: Path | None = None) -> tuple[SparseRows, int, dict]:
    """The pool's rows from the real splade-tiny on this CPU; its vocabulary size and spec. ``cache``: an
    ``.npz`` reused when it holds the same passages (the encoding takes minutes on a busy 2-core host)."""
    import numpy as np

    ids = "\n".join(d.id for d in docs)
    if cache is not None and cache.is_file():
        saved = np.load(cache)
        if str(saved["ids"]) == ids:
            spec = json.loads(str(saved["spec"]))
            return SparseRows(saved["indptr"], saved["indices"], saved["values"]), int(saved["vocab"]), spec
    from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder

    encoder = SpladeEncoder(SpladeConfig(device="cpu"))
    rows = SparseRows.concat([r for _, r in encoder.stream_documents([d.full_text for d in docs])])
    if cache is not None:
        np.savez(cache, ids=ids, spec=json.dumps(encoder.spec()), vocab=encoder.vocab_size,
                 indptr=rows.indptr, indices=rows.indices, values=rows.values)
    return rows, encoder.vocab_size, encoder.spec()


class ReplayEncoder:
    """Replays precomputed CSR blocks as ``stream_documents`` would yield them (a measurement device)."""

    def __init__(self, blocks: list[tuple[int, SparseRows]], vocab_size: int, spec: dict,
                 pace: float | None, busy: bool = False, serial: bool = False):
        self.blocks, self.vocab_size, self._spec, self.pace = blocks, vocab_size, spec, pace
        self.busy, self.serial = busy, serial

    def spec(self) -> dict:
        return {**self._spec, "replay": True}

    def encode_documents(self, texts, show_progress=None):
        raise NotImplementedError("the replay only streams")

    def stream_documents(self, texts, threads=None, show_progress=None):
        total = sum(len(rows) for _, rows in self.blocks)
        if len(texts) != total:
            raise ValueError(f"the replay holds {total} rows, the job asks for {len(texts)}")
        started = time.perf_counter()
        done = 0
        for offset, rows in self.blocks:
            done += len(rows)
            if self.serial:  # the feeder's own time per block starts when the job asks for the block
                time.sleep(len(rows) / self.pace)
            elif self.pace:  # the block is ready once the device has made its documents
                due = started + done / self.pace
                if self.busy:  # a host thread at work, holding the GIL (Python lets it go every 5 ms)
                    while time.perf_counter() < due:
                        pass
                elif due > time.perf_counter():
                    time.sleep(due - time.perf_counter())
            yield offset, rows


def replay_blocks(pool: SparseRows, n: int) -> list[tuple[int, SparseRows]]:
    """Rows of documents 0..n-1 (document i is pool row i mod len(pool)) in the GPU stream's chunks."""
    from sparsa.token_batches import CHUNK_SIZES, chunk_bounds

    blocks = []
    for a, b in chunk_bounds(n, CHUNK_SIZES):
        parts, i = [], a
        while i < b:
            lo = i % len(pool)
            hi = min(len(pool), lo + (b - i))
            parts.append(pool.slice(lo, hi))
            i += hi - lo
        joined = SparseRows.concat(parts)  # a fresh copy per block, as the encoder hands over
        blocks.append((a, SparseRows(joined.indptr.copy(), joined.indices.copy(), joined.values.copy())))
    return blocks


class PhaseTimers:
    """Wall seconds spent in named functions of the build, by wrapping them where the build looks them up."""

    TARGETS = (
        ("sparsa.indexes.learned_sparse", "run_stream_in_shards", "shard job (stream, cut, write)"),
        ("sparsa.indexes.shards", "fingerprint", "  of which: job fingerprint"),
        ("sparsa.indexes.learned_sparse", "encode_in_shards", "encode_in_shards (job + join)"),
        ("sparsa.indexes.learned_sparse", "clear_job", "clear_job"),
        ("sparsa.indexes.learned_sparse", "write_manifest", "write_manifest (sha256)"),
        ("sparsa.indexes.jobs", "corpus_identity", "corpus identity"),
    )
    METHODS = (
        ("sparsa.indexes.sparse_matrix", "SparseMatrix", "save", "SparseMatrix.save"),
        ("sparsa.indexes.exact_sparse", "ExactSparseSearcher", "build", "exact backend build"),
    )

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._undo: list = []

    def _wrap(self, fn, label):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                key = label if threading.current_thread() is threading.main_thread() else f"{label}, thread"
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started
        return timed

    def __enter__(self):
        import importlib

        for module_name, attr, label in self.TARGETS:
            module = importlib.import_module(module_name)
            if hasattr(module, attr):
                self._undo.append((module, attr, getattr(module, attr)))
                setattr(module, attr, self._wrap(getattr(module, attr), label))
        for module_name, cls_name, attr, label in self.METHODS:
            cls = getattr(importlib.import_module(module_name), cls_name)
            raw = cls.__dict__.get(attr)
            if raw is None:
                continue
            self._undo.append((cls, attr, raw))
            if isinstance(raw, classmethod):
                setattr(cls, attr, classmethod(self._wrap(raw.__func__, label)))
            else:
                setattr(cls, attr, self._wrap(raw, label))
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)


def one_build(corpus: Corpus, encoder: ReplayEncoder, work: Path, timers: bool = True) -> dict:
    from sparsa.indexes import build_index

    out = work / "index"
    with PhaseTimers() as phases:
        started = time.perf_counter()
        build_index("splade", corpus, out, encoder=encoder, show_progress=False)
        seconds = time.perf_counter() - started
    manifest = json.loads((out / "sparsa.json").read_text())
    shutil.rmtree(out)
    return {"seconds": seconds, "manifest_encode_seconds": manifest["encode_seconds"],
            "manifest_build_seconds": manifest["build_seconds"], "nnz": manifest["nnz"],
            "phases_s": {k: round(v, 3) for k, v in phases.seconds.items()}}


def profile_build(corpus: Corpus, encoder: ReplayEncoder, work: Path, top: int = 14) -> dict:
    from sparsa.indexes import build_index

    profiler = cProfile.Profile()
    profiler.enable()
    build_index("splade", corpus, work / "index", encoder=encoder, show_progress=False)
    profiler.disable()
    shutil.rmtree(work / "index")
    stats = pstats.Stats(profiler, stream=io.StringIO())
    entries = []
    for (file, line, name), (_, calls, own, cum, _) in stats.stats.items():
        where = f"{Path(file).name}:{line}:{name}" if line else name
        entries.append((where, calls, own, cum))
    by_own = sorted(entries, key=lambda e: -e[2])[:top]
    by_cum = sorted(entries, key=lambda e: -e[3])[:top]
    return {"note": "main thread only (cProfile does not follow the writer thread)",
            "top_own_s": {w: round(o, 3) for w, _, o, _ in by_own},
            "top_cumulative_s": {w: round(c, 3) for w, _, _, c in by_cum}}


def page_probe(nbytes: int, idle_s: float = 4.0, repeats: int = 3) -> dict:
    """Seconds to write ``nbytes`` to a file right after freeing that much touched memory, and after
    ``idle_s`` idle: on a VM that hands idle freed pages back to its host (virtio-balloon free page
    reporting), the second is several times the first, whatever the code writing."""
    import os

    import numpy as np

    data = np.ones(nbytes // 4, np.float32)
    times: dict[str, list[float]] = {"right_after_free_s": [], f"after_{idle_s:g}s_idle_s": []}
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "probe.bin"
        for _ in range(repeats):
            for key, wait in zip(times, (0.0, idle_s)):
                freed = np.ones(2 * nbytes // 4, np.float32)
                del freed
                time.sleep(wait)
                started = time.perf_counter()
                data.tofile(target)
                times[key].append(time.perf_counter() - started)
                os.remove(target)
    return {"mib": round(nbytes / 2**20), **{k: round(statistics.median(v), 3) for k, v in times.items()}}


def median_row(runs: list[dict], docs: int, pace: float | None) -> dict:
    seconds = statistics.median(r["seconds"] for r in runs)
    row = {"seconds": round(seconds, 3), "runs_s": [round(r["seconds"], 3) for r in runs],
           "docs_per_s": round(docs / seconds, 1), "s_per_100k_docs": round(seconds * 100_000 / docs, 3)}
    best = min(r["seconds"] for r in runs)  # the least disturbed run (a shared VM; see page_probe)
    row["best_s_per_100k_docs"] = round(best * 100_000 / docs, 3)
    if pace:
        ideal = docs / pace
        row.update(ideal_s=round(ideal, 3), added_s=round(seconds - ideal, 3),
                   added_s_per_100k_docs=round((seconds - ideal) * 100_000 / docs, 3),
                   best_added_s_per_100k_docs=round((best - ideal) * 100_000 / docs, 3))
    middle = min(runs, key=lambda r: abs(r["seconds"] - seconds))
    row.update(manifest_encode_seconds=middle["manifest_encode_seconds"],
               manifest_build_seconds=middle["manifest_build_seconds"], phases_s=middle["phases_s"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--pool", type=int, default=4096, help="real passages encoded once, then replayed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pace", type=float, default=DEFAULT_PACE, help="docs/s of the paced mode")
    parser.add_argument("--pool-cache", type=Path, default=None,
                        help="an .npz of the pool's rows, written on first use, reused after")
    parser.add_argument("--profile", action="store_true", help="cProfile one instant build")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--name", default="index_harness_cpu")
    parser.add_argument("--results", type=Path, default=None, help="write here instead of bench/results")
    parser.add_argument("--library", default=None,
                        help="which sparsa ran, if not this checkout ('commit abc1234 via PYTHONPATH')")
    parser.add_argument("--before", type=Path, default=None,
                        help="an earlier run's JSON (e.g. at the commit before a change): kept as 'before'")
    args = parser.parse_args()

    started = time.perf_counter()
    pool_docs = passages(args.pool)
    pool, vocab, spec = encode_pool(pool_docs, args.pool_cache)
    pool_s = time.perf_counter() - started
    docs = [Document(f"{pool_docs[i % len(pool_docs)].id}~{i // len(pool_docs)}",
                     pool_docs[i % len(pool_docs)].text, pool_docs[i % len(pool_docs)].title)
            for i in range(args.docs)]
    corpus = Corpus(docs)
    blocks = replay_blocks(pool, args.docs)
    print(f"pool: {len(pool_docs)} passages encoded in {pool_s:.1f} s; {args.docs} docs, "
          f"{sum(r.nnz for _, r in blocks) / args.docs:.1f} terms/doc, {len(blocks)} blocks", file=sys.stderr)

    rows = []
    profile = None
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        work = Path(scratch)
        for mode in ("instant", "paced", "busy", "serial"):
            pace = None if mode == "instant" else args.pace
            encoder = ReplayEncoder(blocks, vocab, spec, pace, busy=mode == "busy", serial=mode == "serial")
            one_build(corpus, encoder, work)  # warm-up: imports, page cache, allocator
            runs = [one_build(corpus, encoder, work) for _ in range(args.repeats)]
            rows.append({"mode": mode, "pace_docs_per_s": pace, **median_row(runs, args.docs, pace)})
        if args.profile:
            profile = profile_build(corpus, ReplayEncoder(blocks, vocab, spec, None), work)

    probe = page_probe(sum(r.nnz for _, r in blocks) * 8)  # the vectors' two big arrays
    print(f"writing {probe['mib']} MiB: {probe}")
    print(f"{'mode':8} {'s/100k':>8} {'docs/s':>10} {'added s/100k':>13} {'best added':>11}")
    for row in rows:
        print(f"{row['mode']:8} {row['s_per_100k_docs']:8.3f} {row['docs_per_s']:10.1f} "
              f"{row.get('added_s_per_100k_docs', row['s_per_100k_docs']):13.3f} "
              f"{row.get('best_added_s_per_100k_docs', row['best_s_per_100k_docs']):11.3f}")
        for label, s in row["phases_s"].items():
            print(f"    {label:36} {s:7.3f} s")
    if profile:
        print("profile, own time (main thread):")
        for where, s in profile["top_own_s"].items():
            print(f"    {s:7.3f}  {where}")
    payload = {
        "timed": ("build_index('splade') with a replayed encoder: the whole job but the model, per "
                  f"{args.docs} documents (median of {args.repeats} after a warm-up)"),
        "machine": "this host's CPU: a 2-core VM shared with other jobs (no GPU)",
        "pool": {"passages": len(pool_docs), "source": "RealTime QA 100-word passages",
                 "encoder": "splade-tiny on CPU", "encode_seconds": round(pool_s, 1),
                 "nnz_per_doc": round(sum(r.nnz for _, r in blocks) / args.docs, 1)},
        "library": args.library or "this checkout (meta.git_commit)",
        "docs": args.docs, "blocks": len(blocks), "rows": rows, "profile": profile, "page_probe": probe,
    }
    if args.before:
        earlier = json.loads(args.before.read_text())
        payload["before"] = {"library": earlier.get("library"), "command": earlier["meta"]["command"],
                             "date": earlier["meta"]["date"], "rows": earlier["rows"],
                             "profile": earlier.get("profile")}
    path = write_results(args.name, payload, path=args.results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
