"""The service benches' harness: ``sparsa serve`` in a child process over a scratch SPARSA_HOME, the
server's own counts (Prometheus ``/metrics``), a load client that counts dropped connections on both
sides, and a CPU sampler of the server process."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

KEY = "bench-key"


def scratch_home(real_home: Path, folder: Path, names=("scifact-bm25", "scifact-splade")) -> Path:
    """A SPARSA_HOME with the real models (linked) and copies of the published SciFact indexes."""
    (folder / "indexes").mkdir(parents=True)
    os.symlink(real_home / "models", folder / "models")
    for name in names:
        if not (real_home / "indexes" / name / "sparsa.json").is_file():
            sys.exit(f"error: {real_home / 'indexes' / name} is missing; run 'make demo' first")
        shutil.copytree(real_home / "indexes" / name, folder / "indexes" / name)
    return folder


class Server:
    """``sparsa serve`` in a child process; ``extra`` are more flags."""

    def __init__(self, home: Path, port: int, extra: list[str], log: Path):
        self.base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "SPARSA_HOME": str(home), "SPARSA_API_KEY": KEY,
               "TOKENIZERS_PARALLELISM": "false"}
        command = [sys.executable, "-m", "sparsa", "serve", "--port", str(port), *extra]
        self.log = log
        self.process = subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def wait_ready(self, seconds: float = 600) -> float:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited ({self.process.returncode}): "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.base + "/health", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("server not ready in time")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def server_counts(base: str, route: str | None = None) -> dict[str, dict[str, int]]:
    """What the server counted (its ``/metrics``): responses by status class (of ``route``, else all)
    and connection events (``api/server.py``: idle closes, spared closes, resets, ...)."""
    statuses: dict[str, int] = {}
    events: dict[str, int] = {}
    for line in httpx.get(base + "/metrics", timeout=30).text.splitlines():
        found = re.match(r'sparsa_requests_total\{(.*)status="(\d)\d\d"\} ([0-9.e+]+)', line)
        if found and (route is None or f'route="{route}"' in found.group(1)):
            key = f"{found.group(2)}xx"
            statuses[key] = statuses.get(key, 0) + int(float(found.group(3)))
        found = re.match(r'sparsa_connection_events\{event="(\w+)"\} ([0-9.e+]+)', line)
        if found:
            events[found.group(1)] = int(float(found.group(2)))
    return {"responses": statuses, "connections": events}


def status_counts(base: str) -> dict[str, int]:
    """Responses by status class, as the server counted them."""
    return server_counts(base)["responses"]


def _difference(after: dict, before: dict) -> dict:
    return {group: {k: v - before.get(group, {}).get(k, 0) for k, v in sorted(counts.items())}
            for group, counts in after.items()}


def error_kind(exc: BaseException) -> str:
    """httpx's error with the OS error under it: ``ReadError (ConnectionResetError)``."""
    root, seen = exc, 0
    while (root.__cause__ or root.__context__) is not None and seen < 8:
        root, seen = root.__cause__ or root.__context__, seen + 1
    return type(exc).__name__ if root is exc else f"{type(exc).__name__} ({type(root).__name__})"


async def load_run(base: str, retriever: str, queries: list[str], clients: int, seconds: float,
                   keepalive_expiry: float = 5.0) -> dict:
    """``clients`` concurrent httpx clients (one pooled AsyncClient, its connections kept alive
    ``keepalive_expiry`` s when idle) POST /search for ``seconds``. Client errors are counted by kind, the
    connections the client opened by httpcore's trace; the server's counts of the same stretch (responses,
    connection events) come from its /metrics."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    opened = [0]
    deadline = time.perf_counter() + seconds

    async def trace(event: str, info: dict) -> None:
        if event == "connection.connect_tcp.complete":
            opened[0] += 1

    async def one_client(number: int, client: httpx.AsyncClient) -> None:
        turn = number
        while time.perf_counter() < deadline:
            query = queries[turn % len(queries)]
            turn += clients
            started = time.perf_counter()
            try:
                body = {"query": query, "retriever": retriever, "k": 10}
                response = await client.post("/search", json=body, extensions={"trace": trace})
                ok = response.status_code == 200 and len(response.json()["hits"]) > 0
                key = None if ok else f"status {response.status_code}"
            except httpx.HTTPError as exc:
                key = error_kind(exc)
            if key is None:
                latencies.append(time.perf_counter() - started)
            else:
                errors[key] = errors.get(key, 0) + 1

    before = server_counts(base, "/search")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients,
                          keepalive_expiry=keepalive_expiry)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one_client(i, client) for i in range(clients)))
        elapsed = time.perf_counter() - started
    server = _difference(server_counts(base, "/search"), before)
    ms = np.array(latencies) * 1000
    return {"retriever": retriever, "clients": clients, "seconds": round(elapsed, 1),
            "requests": len(latencies), "errors": sum(errors.values()), "error_kinds": errors,
            "throughput_rps": round(len(latencies) / elapsed, 1),
            "latency_ms": {p: round(float(np.percentile(ms, q)), 1) for p, q in
                           (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))} if len(ms) else {},
            "client": {"errors_by_kind": errors, "connections_opened": opened[0],
                       "keepalive_expiry_s": keepalive_expiry},
            "server": server}


class CpuSampler:
    """The server process's CPU seconds (user + system, all its threads) every ``step`` seconds."""

    def __init__(self, pid: int, step: float = 0.1):
        import psutil

        self.process, self.step, self.samples, self.stop = psutil.Process(pid), step, [], asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            times = self.process.cpu_times()
            self.samples.append((time.monotonic(), times.user + times.system))
            await asyncio.sleep(self.step)

    def share(self, since: float, until: float) -> float:
        """Cores used on average between two instants."""
        inside = [(t, c) for t, c in self.samples if since <= t <= until]
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]) if len(inside) > 1 else 0.0

    def busy_until(self, threshold: float = 0.2) -> float | None:
        """The end of the last 0.5 s window in which the server used more than ``threshold`` of a core
        (an idle server here uses about 0.04: the JVM, uvicorn; CPU time comes in 10 ms ticks)."""
        pairs = zip(self.samples, self.samples[5:], strict=False)
        return max((t1 for (t0, c0), (t1, c1) in pairs if (c1 - c0) / (t1 - t0) > threshold), default=None)


def ms(seconds: list[float]) -> dict:
    """Median and maximum, in milliseconds."""
    return {"p50": round(1000 * float(np.median(seconds)), 1), "max": round(1000 * max(seconds or [0]), 1)}
