"""What every benchmark records beside its numbers: command, commit, hardware, versions."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def run_metadata(packages: tuple[str, ...] = ()) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                                cwd=Path(__file__).parent).stdout.strip()
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


def write_results(name: str, payload: dict, packages: tuple[str, ...] = (), path: Path | None = None) -> Path:
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": run_metadata(packages), **payload}, indent=2) + "\n")
    return path


def run_stages(args, stages: dict, log) -> None:
    """The staged benches' main loop: log at INFO, TF32 matmuls on CUDA (float32 weights score the same in
    every stage, so a calibrator fitted on one applies to the next), then ``stages["stage_<name>"](args)``
    for each of ``args.stages`` in order, each one's seconds logged. ``stages``: the script's ``globals()``."""
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
