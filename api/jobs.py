"""Index builds started through the API, each a ``sparsa index`` process of its own.

A separate process keeps a build's memory and a crash (or a ``kill -9``) away from the server; the
build itself is ``sparsa.indexes.build_index_job`` (``sparsa index`` only calls it), an atomic, resumable
job, so a killed build leaves the published index serving and a rerun of the same build resumes from
its checkpointed shards.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sparsa.errors import ConfigError

_LOG_TAIL = 2000


@dataclass
class BuildProcess:
    id: str
    name: str
    kind: str
    dataset: str
    log: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def state(self) -> str:
        code = self.process.poll()
        return "running" if code is None else "succeeded" if code == 0 else "failed"

    def describe(self) -> dict:
        tail = self.log.read_text(errors="replace")[-_LOG_TAIL:] if self.log.is_file() else ""
        return {"id": self.id, "name": self.name, "kind": self.kind, "dataset": self.dataset,
                "state": self.state, "pid": self.process.pid, "returncode": self.process.poll(), "log_tail": tail}


class BuildJobs:
    """Starts builds (one per index name at a time) and remembers them for status queries."""

    def __init__(self, index_root: Path, data_dir: Path):
        self.index_root, self.data_dir = Path(index_root), Path(data_dir)
        self.jobs: dict[str, BuildProcess] = {}
        self._lock = threading.Lock()

    def start(self, name: str, kind: str, dataset: str) -> BuildProcess:
        if not (self.data_dir / dataset).is_dir():
            known = sorted(p.name for p in self.data_dir.iterdir() if p.is_dir()) if self.data_dir.is_dir() else []
            raise ConfigError(f"unknown dataset {dataset!r}; known: {', '.join(known) or '(none)'}")
        with self._lock:
            for job in self.jobs.values():
                if job.name == name and job.state == "running":
                    raise ConfigError(f"a build of {name!r} is already running (job {job.id})")
            job_id = uuid.uuid4().hex[:12]
            self.index_root.mkdir(parents=True, exist_ok=True)
            log = self.index_root / f".{name}.build-{job_id}.log"
            command = [sys.executable, "-m", "sparsa", "index", "--dataset", str(self.data_dir / dataset),
                       "--kind", kind, "--out", str(self.index_root / name), "--threads", "1"]
            with log.open("wb") as sink:
                process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            job = BuildProcess(job_id, name, kind, dataset, log, process)
            self.jobs[job_id] = job
            return job

    def get(self, job_id: str) -> BuildProcess:
        if job_id not in self.jobs:
            raise KeyError(job_id)
        return self.jobs[job_id]
