"""Index builds started through the API: supervised ``sparsa.api.build_worker`` processes.

- **A job table on disk** (``<index root>/.jobs/jobs.json``, replaced atomically under a file lock):
  job ids stay valid across restarts; the newest ``10 * keep_job_logs`` jobs are kept.
- **Process groups**: each build leads a process group of its own, killed with the server on shutdown;
  if the server dies (``kill -9``), the build notices its parent is gone and kills its group. A build
  found running when a server starts is adopted (followed by pid) until it ends; one that ended
  without writing its status file failed, and says so in its ``detail`` (a rerun resumes from its shards).
- **Limits**: at most ``max_builds`` at once (more: 429), one per index name; a name that exists is
  refused unless ``replace`` (409), and an index that this or another live process serves is never
  rebuilt in place (409: build under a new name, then swap).
- **Logs**: ``<id>.log`` per job, rotated by the worker at ``job_log_bytes``; only the newest
  ``keep_job_logs`` jobs keep theirs.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sparsa.artifacts import MANIFEST, serving_pids
from sparsa.errors import ConfigError, SparsaError

_LOG_TAIL = 2000
RUNNING = "running"


def build_model(kind: str, model: str | None) -> str | None:
    """The encoder a build may use: a built-in model name, or a model folder under ``$SPARSA_HOME/models``
    (e.g. a fine-tuned encoder copied there); never a client's path or a hub id (the server fetches
    nothing). A dense model must declare its pooling (sentence-transformers files), as ``sparsa index``
    requires without --pooling."""
    if model is None:
        return None
    if kind == "bm25":
        raise ConfigError("a bm25 index takes no model (model is for splade and dense)")
    from sparsa.config import load_settings
    from sparsa.models import BUILTIN_MODELS, resolve_model

    if model in BUILTIN_MODELS:
        from sparsa.errors import ModelNotFoundError

        try:
            path = resolve_model(model, pull_missing=False)  # a request never waits for a download
        except ModelNotFoundError as exc:
            raise ConfigError(str(exc)) from None
    else:
        folder = load_settings().models_dir / model
        if not (folder / "config.json").is_file():
            known = sorted(BUILTIN_MODELS)
            raise ConfigError(f"unknown model {model!r}: give a built-in model ({', '.join(known)}) or "
                              "a model folder under the server's models folder")
        path = str(folder)
    if kind == "dense":
        from sparsa.retrieval.dense import declares_settings

        if not declares_settings(path):
            raise ConfigError(f"model {model!r} has no sentence-transformers files, so its pooling is "
                              "unknown; build that index with 'sparsa index --pooling ... --normalize'")
    return model if model in BUILTIN_MODELS else path


class JobConflict(SparsaError):
    """The build would overwrite something it must not (answered with 409)."""


class TooManyBuilds(SparsaError):
    """The build limit is reached (answered with 429 and Retry-After)."""

    retry_after = 30


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _is_worker(pid: int, job_id: str) -> bool:
    """Is ``pid`` alive and the build worker of ``job_id`` (not a recycled pid)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc: trust the pid
    return b"sparsa.api.build_worker" in cmdline and job_id.encode() in cmdline


class BuildJobs:
    """Starts, follows and remembers builds; safe to share between threads."""

    def __init__(self, index_root: Path, data_dir: Path, limits: Any):
        self.index_root, self.data_dir, self.limits = Path(index_root), Path(data_dir), limits
        self.folder = self.index_root / ".jobs"
        self._children: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        if self.folder.is_dir():
            self.refresh()  # adopt builds still running, mark the dead ones

    # -- the table ---------------------------------------------------------------------------------

    @contextmanager
    def _table(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The job table, locked across threads and processes; changes are written back atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "jobs.json"
        with self._lock, (self.folder / "lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                jobs = json.loads(path.read_text()) if path.is_file() else {}
            except (OSError, json.JSONDecodeError):
                jobs = {}  # an unreadable table starts over rather than stopping the service
            before = json.dumps(jobs, sort_keys=True)
            yield jobs
            if json.dumps(jobs, sort_keys=True) != before:
                tmp = path.with_name(f"jobs.json.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(jobs, indent=1))
                os.replace(tmp, path)

    def _update(self, job: dict[str, Any]) -> None:
        """Settle a running job whose process has ended (in place)."""
        if job["state"] != RUNNING:  # settled (perhaps by another server on this folder): reap our child
            child = self._children.pop(job["id"], None)
            if child is not None:
                child.poll()
            return
        child = self._children.get(job["id"])
        if child is not None:
            if child.poll() is None:
                return
            job["returncode"] = child.returncode
            self._children.pop(job["id"], None)
        elif _is_worker(job["pid"], job["id"]):
            return
        status = self.folder / f"{job['id']}.status.json"
        try:
            result = json.loads(status.read_text())
        except (OSError, json.JSONDecodeError):
            result = None
        if result is not None:
            job["returncode"] = result["returncode"]
            job["state"] = "succeeded" if result["returncode"] == 0 else "failed"
            job["detail"] = result.get("error") or ""
        else:
            job["state"] = "failed"
            job["detail"] = ("the build process ended without a result (killed, or the server stopped while "
                             "it ran); start the same build again to resume it")
        job["finished_at"] = _now()
        status.unlink(missing_ok=True)

    def _prune(self, jobs: dict[str, dict[str, Any]]) -> None:
        done = sorted((j for j in jobs.values() if j["state"] != RUNNING), key=lambda j: j["started_at"])
        keep_logs = self.limits.keep_job_logs
        for job in done[: max(0, len(done) - keep_logs)]:
            for log in (self.folder / f"{job['id']}.log", self.folder / f"{job['id']}.log.1"):
                log.unlink(missing_ok=True)
        for job in done[: max(0, len(done) - 10 * keep_logs)]:
            del jobs[job["id"]]

    def refresh(self) -> dict[str, dict[str, Any]]:
        with self._table() as jobs:
            for job in jobs.values():
                self._update(job)
            self._prune(jobs)
            return {k: dict(v) for k, v in jobs.items()}

    # -- starting ----------------------------------------------------------------------------------

    def start(self, name: str, kind: str, dataset: str, replace: bool = False,
              served: Iterable[Path] = (), model: str | None = None) -> dict[str, Any]:
        if not (self.data_dir / dataset).is_dir():
            known = (sorted(p.name for p in self.data_dir.iterdir() if p.is_dir())
                     if self.data_dir.is_dir() else [])
            raise ConfigError(f"unknown dataset {dataset!r}; known: {', '.join(known) or '(none)'}")
        model_path = build_model(kind, model)
        out = self.index_root / name
        if out.resolve() in {Path(p).resolve() for p in served} or serving_pids(out):
            raise JobConflict(f"index {name!r} is being served; it is never rebuilt in place: build under a "
                              "new name, then swap that in (POST /indexes/swap)")
        if (out / MANIFEST).is_file() and not replace:
            raise JobConflict(f"an index named {name!r} exists; send \"replace\": true to replace it")
        with self._table() as jobs:
            for job in jobs.values():
                self._update(job)
            running = [j for j in jobs.values() if j["state"] == RUNNING]
            same = [j for j in running if j["name"] == name]
            if same:
                raise JobConflict(f"a build of {name!r} is already running (job {same[0]['id']})")
            if len(running) >= self.limits.max_builds:
                raise TooManyBuilds(f"{len(running)} build(s) running, the limit is "
                                    f"{self.limits.max_builds}; retry when one has finished")
            job_id = uuid.uuid4().hex[:12]
            log = self.folder / f"{job_id}.log"
            command = [sys.executable, "-m", "sparsa.api.build_worker", "--job", job_id,
                       "--dataset", str(self.data_dir / dataset), "--kind", kind, "--out", str(out),
                       "--log", str(log), "--log-bytes", str(self.limits.job_log_bytes),
                       "--status", str(self.folder / f"{job_id}.status.json"), "--parent", str(os.getpid()),
                       "--threads", str(self.limits.build_threads),
                       *(["--replace"] if replace else []),
                       *(["--model", model_path] if model_path else [])]
            with log.open("ab") as sink:  # what the worker prints before it takes over its output
                child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            self._children[job_id] = child
            jobs[job_id] = {"id": job_id, "name": name, "kind": kind, "dataset": dataset, "replace": replace,
                            "model": model,
                            "state": RUNNING, "pid": child.pid, "returncode": None, "detail": "",
                            "started_at": _now(), "finished_at": None}
            self._prune(jobs)
            return dict(jobs[job_id])

    # -- reading -----------------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any]:
        jobs = self.refresh()
        if job_id not in jobs:
            raise KeyError(job_id)
        return jobs[job_id]

    def describe(self, job: dict[str, Any]) -> dict[str, Any]:
        log = self.folder / f"{job['id']}.log"
        tail = log.read_text(errors="replace")[-_LOG_TAIL:] if log.is_file() else ""
        return {**job, "log_tail": tail}

    def running(self) -> list[dict[str, Any]]:
        return [j for j in self.refresh().values() if j["state"] == RUNNING]

    # -- stopping ----------------------------------------------------------------------------------

    def shutdown(self, wait_s: float = 5.0) -> None:
        """Stop this server's builds with it: SIGTERM to each build's process group, SIGKILL after
        ``wait_s``."""
        children = list(self._children.values())
        for child in children:
            if child.poll() is None:
                try:
                    os.killpg(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait_s
        for child in children:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.wait()
        if self.folder.is_dir():
            self.refresh()
