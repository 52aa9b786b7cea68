"""What the bench scripts share; no script imports another (a script's own folder is on sys.path, so
each says ``from common import ...``).

This module: what every benchmark records beside its numbers (command, commit, hardware, versions), and the
staged benches' main loop. Beside it: ``attention`` (the SDPA and FlexAttention baselines of the two
attention benches), ``decode_steps`` (the decode providers ``bench_kernels_h200.py`` times),
``rag_sets`` (the question sets ``bench_rag.py`` writes and reads), ``sparse_collection`` (the
real-derived synthetic SPLADE collection), ``lsr`` (``bench_lsr.py``'s dataset keys, TREC DL 2019 pools,
index size, query latency, BM25 step) and ``doc_formats`` (the value formatters bench/results_doc.toml
names).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"


def run_metadata(packages: tuple[str, ...] = ()) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    versions = {}
    for name in ("sparsa", *packages):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_commit": commit,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hardware": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                     "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "versions": versions,
    }


def write_results(name: str, payload: dict, packages: tuple[str, ...] = (), path: Path | None = None,
                  gpu: str | None = None) -> Path:
    """``bench/results/<name>.json`` (or ``path``): the run record, then ``payload``; ``gpu``:
    the card it ran on."""
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = run_metadata(packages)
    if gpu:
        meta["hardware"]["gpu"] = gpu
    path.write_text(json.dumps({"meta": meta, **payload}, indent=2) + "\n")
    return path


def sparsa_cli(*args: object) -> None:
    """Run ``python -m sparsa ARGS`` as a user would, echoing the command; a failure stops the bench."""
    command = [sys.executable, "-m", "sparsa", *map(str, args)]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def run_stages(args, stages: dict, log) -> None:
    """The staged benches' main loop: log at INFO, TF32 matmuls on CUDA (float32 weights score the same in
    every stage, so a calibrator fitted on one applies to the next), then ``stages["stage_<name>"](args)``
    for each of ``args.stages`` in order, each one's seconds logged. ``stages``: the script's
    ``globals()``."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("sparsa").setLevel(logging.INFO)
    if args.device.startswith("cuda"):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = True
    args.stage_dir.mkdir(parents=True, exist_ok=True)
    for stage in args.stages:
        started = time.perf_counter()
        stages[f"stage_{stage}"](args)
        log.info("stage %s: %.1f s", stage, time.perf_counter() - started)
