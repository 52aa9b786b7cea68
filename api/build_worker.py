"""One index build started by the service (``api/jobs.py``): ``python -m sparsa.api.build_worker``.

The server starts it as the leader of a new process group. It

- runs ``sparsa.indexes.build_index_job`` (atomic and resumable: a killed build leaves the published
  index as it was, and a rerun resumes from its checkpointed shards);
- dies with the server: when its parent process goes away (``kill -9`` of the server included) it
  kills its whole process group within ``PARENT_POLL_S``;
- writes its output (Python, Java and native alike: file descriptors 1 and 2) to ``--log``, which
  rotates to ``<log>.1`` past ``--log-bytes``;
- writes ``--status`` (JSON: returncode, error) last, so the server can tell a finished build from
  one that was killed, also after a restart.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

PARENT_POLL_S = 0.5


class RotatingSink:
    """Copies a pipe into ``path``, moving it to ``path.1`` whenever it passes ``limit`` bytes."""

    def __init__(self, path: Path, limit: int):
        self.path, self.limit = path, limit
        self.file = path.open("ab")

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()
        if self.file.tell() > self.limit:
            self.file.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.file = self.path.open("ab")

    def pump(self, fd: int) -> None:
        while data := os.read(fd, 65536):
            self.write(data)
        self.file.close()


def capture_output(log: Path, limit: int) -> threading.Thread:
    """Route fds 1 and 2 through a pipe into a rotating log; returns the copying thread."""
    read, write = os.pipe()
    os.dup2(write, 1)
    os.dup2(write, 2)
    os.close(write)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    pump = threading.Thread(target=RotatingSink(log, limit).pump, args=(read,), name="log-pump", daemon=True)
    pump.start()
    return pump


def release_output(pump: threading.Thread) -> None:
    """Close the pipe's write ends so the copying thread drains it and stops."""
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    pump.join(10)


def watch_parent(parent: int) -> None:
    """Kill this process group as soon as the server that started it is gone."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def write_status(path: Path, returncode: int, error: str | None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"returncode": returncode, "error": error, "pid": os.getpid()}))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--kind", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--replace", action="store_true")
    parser.add_argument("--model", help="splade/dense encoder (default splade-tiny / minilm-l6)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the build")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--log-bytes", type=int, default=1 << 20)
    parser.add_argument("--status", type=Path, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--job", required=True, help="the job id (also marks this process as the job's)")
    args = parser.parse_args(argv)
    watch_parent(args.parent)
    pump = capture_output(args.log, args.log_bytes)
    returncode, error = 0, None
    try:
        from sparsa.data import load_corpus
        from sparsa.errors import SparsaError
        from sparsa.indexes import build_index_job

        print(f"job {args.job}: building a {args.kind} index of {args.dataset} at {args.out}", flush=True)
        started = time.perf_counter()
        try:
            corpus = load_corpus(args.dataset)
            build_index_job(args.kind, corpus, args.out, model=args.model, threads=args.threads,
                            show_progress=False, corpus_name=args.dataset.name, replace=args.replace)
            print(f"indexed {len(corpus)} documents in {time.perf_counter() - started:.1f} s", flush=True)
        except SparsaError as exc:
            returncode, error = 2, str(exc)
            print(f"error: {exc}", flush=True)
    except Exception as exc:  # noqa: BLE001 - anything else is logged with its trace and reported
        traceback.print_exc()
        returncode, error = 1, f"{type(exc).__name__}: {exc}"
    release_output(pump)
    write_status(args.status, returncode, error)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
