"""What ``bench/bench_lsr.py`` shares with its tests: dataset keys, TREC DL 2019's judged pool, query
latency, index size on disk, warm-up texts, the measures per dataset.

TREC DL 2019 (``trec-dl-2019-passage``, key ``dl19``) is scored two ways: ``dl19`` searches the whole
~10.8k-passage corpus (the judged passages + 1,679 unjudged ones), ``dl19-pool`` ranks only each query's
own judged passages, as ``sparsa search --pool <qrels>`` does (the whole index scored, then
``sparsa.eval.pool.judged_pool_run``).
"""

from __future__ import annotations

import itertools
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

DATASETS = ("scifact", "cranfield", "cisi", "trec-dl-2019-passage")
KEYS = {"trec-dl-2019-passage": "dl19"}  # dataset folder -> the key in run names and the record
POOLED = ("dl19",)  # keys whose judged pool is also ranked on its own: '<key>-pool' runs
POOL_FILE = "pool.tsv"  # 'qid<TAB>docid' per judged pair, no grades: the pool where no qrels travel
GRADED = ("dl19", "dl19-pool")  # TREC DL convention: relevant means grade >= 2 for recall and RR
# display name -> ir_measures measure, per kind of dataset; nDCG@10 uses the grades as gains either way
MEASURES = {"nDCG@10": "nDCG@10", "R@100": "R@100", "MRR@10": "RR@10"}
GRADED_MEASURES = {"nDCG@10": "nDCG@10", "R@100": "R(rel=2)@100", "MRR@10": "RR(rel=2)@10"}
_WORD = re.compile(r"[^\W_]+")


def dataset_key(name: str) -> str:
    """``trec-dl-2019-passage`` -> ``dl19``; other folder names are their own key."""
    return KEYS.get(name, name)


def dataset_folder(name: str) -> str:
    """A dataset key or folder name -> the folder name (``dl19`` -> ``trec-dl-2019-passage``)."""
    return {key: folder for folder, key in KEYS.items()}.get(name, name)


def run_parts(stem: str) -> tuple[str, str]:
    """``splade-tiny.dl19-pool`` -> (system, dataset key); system names may hold dots."""
    system, _, key = stem.rpartition(".")
    return system, key


def qrels_key(key: str) -> str:
    """The dataset whose qrels score a run key: ``dl19-pool`` -> ``dl19``."""
    return key.removesuffix("-pool")


def measures_for(key: str) -> dict[str, str]:
    return GRADED_MEASURES if key in GRADED else MEASURES


def read_pool(path: Path):
    """A ``pool.tsv`` (``qid<TAB>docid``) as Qrels whose grades are all 0: only membership is used."""
    from sparsa.errors import DataFormatError
    from sparsa.types import Qrels

    pool: dict[str, dict[str, int]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataFormatError(path, f"expected 'qid<TAB>docid', got {len(parts)} columns", number)
        pool.setdefault(parts[0].strip(), {})[parts[1].strip()] = 0
    if not pool:
        raise DataFormatError(path, "no judged pairs in file")
    return Qrels(pool)


def judged_pool(data):
    """The judged documents per query of a loaded dataset: its qrels, else ``pool.tsv`` in its folder
    (staged for the GPU machine, where no qrels travel), else None."""
    if data.qrels is not None:
        return data.qrels
    path = Path(data.path) / POOL_FILE
    return read_pool(path) if path.is_file() else None


def marked(texts: Sequence[str], n: int) -> list[str]:
    """``n`` texts (cycled) with ``zq`` after every word: a warm-up that shares no word with the corpus,
    so no word cache is primed for the timed texts (as bench_encoding.py / bench_indexing.py do)."""
    return [_WORD.sub(lambda m: m.group() + "zq", t) for t in itertools.islice(itertools.cycle(texts), n)]


def index_bytes(matrix) -> int:
    """Bytes a user's index holds for these vectors: what ``LearnedSparseIndex.build`` writes under
    ``vectors/`` (``SparseMatrix.save``: indptr int64, indices int32, values float32 .npy, doc_ids.json).
    The exact backend stores nothing else; the manifest (``sparsa.json``, ~1-2 KB) is left out."""
    with tempfile.TemporaryDirectory() as folder:
        matrix.save(Path(folder) / "vectors")
        return sum(p.stat().st_size for p in (Path(folder) / "vectors").iterdir())


def query_latency(search: Callable[[str], object], texts: Sequence[str], limit: int) -> dict:
    """Median ms per query, one query at a time through ``search(text)`` (a learned-sparse model: encode
    it and search the index exactly; BM25: Lucene's search), after one warm-up query (``texts[0]``,
    untimed); then up to ``limit`` of the following queries are timed."""
    timed = list(texts[1 : 1 + limit]) or list(texts[:1])
    search(texts[0])
    ms = []
    for text in timed:
        started = time.perf_counter()
        search(text)
        ms.append((time.perf_counter() - started) * 1000)
    return {"query_ms_median": round(statistics.median(ms), 2), "latency_queries": len(ms)}


def encoded_search(encoder, searcher, k: int) -> Callable[[str], object]:
    """One query's search with a learned-sparse model: encode it, search the index exactly (top ``k``)."""
    return lambda text: searcher.search_vectors(encoder.encode_queries([text], show_progress=False), k)


def device_name(device) -> str:
    """The card (CUDA) or the CPU model and the threads torch uses."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "cpu"
    return f"{model}, {torch.get_num_threads()} threads"


# ---- evaluate's side: which runs, BM25 through the CLI, the printed table


def collect_runs(specs: Sequence[str]) -> tuple[dict[str, Path], dict[str, dict]]:
    """``DIR`` or ``DIR:SYSTEM,SYSTEM`` (only those systems) -> the runs by stem and the timings of the kept
    runs (each folder's ``timings.json``). A stem found in two folders is an error: one figure, one run."""
    import json

    runs: dict[str, Path] = {}
    timings: dict[str, dict] = {}
    for spec in specs:
        folder, _, only = spec.partition(":")
        keep = set(filter(None, only.split(",")))
        folder_path = Path(folder)
        if not folder_path.is_dir():
            raise SystemExit(f"--runs {spec}: {folder} is not a folder")
        found = json.loads((folder_path / "timings.json").read_text()) \
            if (folder_path / "timings.json").is_file() else {}
        stems = {p.stem: p for p in sorted(folder_path.glob("*.trec"))}
        for stem in sorted(stems.keys() | found.keys()):  # timings without a run: BM25's size and latency
            if keep and run_parts(stem)[0] not in keep:
                continue
            if stem in runs or stem in timings:
                raise SystemExit(f"{stem} is in {folder} and an earlier --runs folder: name the systems "
                                 "to take from one of them (DIR:SYSTEM,...)")
            if stem in stems:
                runs[stem] = stems[stem]
            if stem in found:
                timings[stem] = found[stem]
    return runs, timings


def bm25_step(out: Path, data_dir: Path, datasets: Sequence[str], k: int, latency_queries: int) -> None:
    """Lucene BM25 (the CLI's defaults, k1=0.9 b=0.4) per dataset: ``sparsa index --kind bm25``; for the
    pooled datasets also ``sparsa search`` runs (whole corpus, k; and ``--pool`` the qrels); per dataset the
    index's bytes (its manifest's files) and the median latency of one query at a time (after one
    warm-up query) in ``timings.json``."""
    import json

    from common import sparsa_cli as cli
    from sparsa.artifacts import read_manifest
    from sparsa.data import load_dataset
    from sparsa.data.beir import qrels_file
    from sparsa.search import open_retriever

    out.mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    for name in datasets:
        key, folder = dataset_key(name), data_dir / dataset_folder(name)
        index = out / "indexes" / f"{key}-bm25"
        cli("index", "--dataset", folder, "--kind", "bm25", "--out", index, "--replace")
        if key in POOLED:
            cli("search", "--index", index, "--dataset", folder, "--k", k, "--out", out / f"bm25.{key}.trec")
            cli("search", "--index", index, "--dataset", folder, "--pool", qrels_file(folder),
                "--out", out / f"bm25.{key}-pool.trec")
        manifest = read_manifest(index, verify="none")
        retriever = open_retriever(index)
        texts = [q.text for q in load_dataset(folder).queries]
        timings[f"bm25.{key}"] = {
            "docs": manifest["num_documents"], "device": "cpu", "device_name": device_name("cpu"),
            "index_bytes": sum(f["bytes"] for f in manifest["files"].values()),
            **query_latency(partial(retriever.search_text, k=k), texts, latency_queries)}
        print("bm25", key, timings[f"bm25.{key}"], flush=True)
        timings_path.write_text(json.dumps(timings, indent=2))


def print_table(rows: dict[str, dict], keys: Sequence[str]) -> None:
    """Per system: nDCG@10 / R@100 per dataset key, then per dataset terms/doc, MB, docs/s, ms/query."""
    systems = sorted({run_parts(stem)[0] for stem in rows}, key=lambda s: (s != "bm25", s))
    print(f"{'system':<30}" + "".join(f"{k:>16}" for k in keys) + "   (nDCG@10 / R@100)")
    for system in systems:
        cells = [rows.get(f"{system}.{k}") for k in keys]
        print(f"{system:<30}" + "".join(f"{c['nDCG@10']:>8.4f}/{c['R@100']:.4f}"[-16:].rjust(16)
                                        if c and "nDCG@10" in c else f"{'-':>16}" for c in cells))
    print(f"\n{'system':<30}" + "".join(f"{k:>26}" for k in keys if not k.endswith("-pool"))
          + "   (terms/doc, MB, docs/s, ms/query)")
    for system in systems:
        line = ""
        for k in (k for k in keys if not k.endswith("-pool")):
            c = rows.get(f"{system}.{k}", {})
            parts = [c.get("mean_doc_terms"), c.get("index_bytes") and round(c["index_bytes"] / 1e6, 1),
                     c.get("docs_per_s"), c.get("query_ms_median")]
            line += " " + " ".join("-" if p is None else f"{p:g}" for p in parts).rjust(25)  # never touching
        print(f"{system:<30}{line}")
