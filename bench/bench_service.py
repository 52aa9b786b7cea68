"""Reliability of the service (issue 9) -> bench/results/service.json.

Starts the real server (``sparsa serve``, SciFact BM25 + splade-tiny indexes, SmolLM2 QA reader,
query-likelihood reranker) as its own process on loopback, in a scratch SPARSA_HOME whose indexes
are copies of the published ones, and measures:

- bad inputs: each gets a precise 4xx (status and message recorded);
- load: N concurrent httpx clients on POST /search (bm25, then splade) for S seconds each:
  throughput, p50/p90/p99 latency, client errors by kind, and what the server counted meanwhile
  (responses by status class, connection events);
- fuzz: schemathesis over the OpenAPI spec (all operations, with the API key), and the server's own
  count of responses by status class (from /metrics): zero 5xx is the target;
- faults: a corrupt index file makes ``sparsa serve`` refuse to start and a swap answer 409; a
  splade build of a new version (the served index is never rebuilt in place) started through the API
  is killed with SIGKILL midway: the served index keeps answering identically, and a rerun resumes
  from the checkpointed shard and publishes; the new version is swapped in;
- overload (issue 26): a server with BM25 + the QA reader and the default limits answers one question
  (so its QA gate knows what an answer costs), then gets a burst of 4x its QA capacity at once:
  how many get a fast 503 (with Retry-After), whether every admitted request ends by its deadline,
  how fast /health and /metrics answer meanwhile, and when the server's CPU falls idle (sampled every
  100 ms from /proc through psutil) relative to the last deadline. Needs only scifact-bm25;
- drops (issue 26): SPLADE /search under 50 clients on servers with keep-alive 5 s (uvicorn's default,
  and this service's before) and the default: client errors by kind (``ReadError (ConnectionResetError)``),
  the connections the client opened, and the server's connection events (idle closes, closes spared
  because a request was waiting, resets; ``api/server.py``). Needs only scifact-splade.

The harness (server process, load client, /metrics readers, CPU sampler) is ``bench/common/service.py``.

    python bench/bench_service.py                      # everything (~30 min on a quiet 2-core machine)
    python bench/bench_service.py --only load --seconds 10
    python bench/bench_service.py --only overload      # merged into service.json as its own run record
    python bench/bench_service.py --only drops --seconds 180   # likewise
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import RESULTS, run_metadata, write_results
from common.service import KEY, CpuSampler, Server, load_run, ms, scratch_home, status_counts

RESULTS_LOG = Path(tempfile.gettempdir()) / "bench_service_server.log"  # kept for a look after the run
SECTIONS = ("bad_inputs", "load", "fuzz", "faults", "overload", "drops")
PACKAGES = ("fastapi", "uvicorn", "httpx", "schemathesis")


def bad_inputs(base: str) -> list[dict]:
    json_headers = {"Content-Type": "application/json"}
    cases = [
        ("empty query", "/search", {"json": {"query": ""}}),
        ("1 MB query", "/search", {"json": {"query": "x" * 1_000_000}}),
        ("invalid UTF-8", "/search", {"content": b'{"query": "caf\xe9 \xff"}', "headers": json_headers}),
        ("k=0", "/search", {"json": {"query": "vitamin D", "k": 0}}),
        ("k=10^9", "/search", {"json": {"query": "vitamin D", "k": 10**9}}),
        ("unknown retriever", "/search", {"json": {"query": "vitamin D", "retriever": "tfidf"}}),
        ("retriever not served", "/search", {"json": {"query": "vitamin D", "retriever": "dense"}}),
        ("broken JSON", "/search", {"content": b'{"query": ', "headers": json_headers}),
        ("empty question", "/qa", {"json": {"question": " "}}),
        ("unknown QA mode", "/qa", {"json": {"question": "why?", "mode": "guess"}}),
        ("rerank: both sources", "/rerank",
         {"json": {"query": "q", "doc_ids": ["1"], "passages": [{"text": "a"}]}}),
        ("missing API key", "/indexes", {"method": "GET"}),
        ("wrong API key", "/indexes", {"method": "GET", "headers": {"X-API-Key": "wrong"}}),
    ]
    results = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for name, path, spec in cases:
            spec = dict(spec)
            response = client.request(spec.pop("method", "POST"), path, **spec)
            results.append({"case": name, "path": path, "status": response.status_code,
                            "detail": response.json().get("detail")})
    return results


def fuzz(base: str, examples: int, report: Path) -> dict:
    before = status_counts(base)
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", base + "/openapi.json",
               "--checks", "not_a_server_error", "--max-examples", str(examples), "-H", f"X-API-Key: {KEY}",
               "--request-timeout", "600", "--seed", "1", "--report", "junit",
               "--report-junit-path", str(report), "--continue-on-failure"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=report.parent)
    after = status_counts(base)
    summary = [line for line in done.stdout.splitlines()
               if re.search(r"passed|failed|error|Operations|cases", line)]
    return {"command": " ".join(command[1:]), "exit_code": done.returncode,
            "seconds": round(time.perf_counter() - started, 1),
            "responses_by_class": {k: after.get(k, 0) - before.get(k, 0) for k in sorted(after)},
            "schemathesis_summary": summary[-12:]}


def corrupt_one_file(index: Path) -> str:
    victim = max((p for p in index.rglob("*") if p.is_file() and p.name != "sparsa.json"),
                 key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(16)
    victim.write_bytes(bytes(data))
    return str(victim.relative_to(index))


def corrupt_index_fault(home: Path, base: str, port: int, log_dir: Path) -> dict:
    broken = home / "indexes" / "scifact-bm25-broken"
    shutil.copytree(home / "indexes" / "scifact-bm25", broken)
    name = corrupt_one_file(broken)
    env = {**os.environ, "SPARSA_HOME": str(home)}
    refused = subprocess.run([sys.executable, "-m", "sparsa", "serve", "--bm25", "scifact-bm25-broken",
                              "--splade", "none", "--qa-model", "none", "--port", str(port + 1)],
                             env=env, capture_output=True, text=True, timeout=300, check=False)
    swap = httpx.post(base + "/indexes/swap", headers={"X-API-Key": KEY}, timeout=120,
                      json={"retriever": "bm25", "name": "scifact-bm25-broken"})
    still = httpx.post(base + "/search", json={"query": "vitamin D", "k": 3}, timeout=60)
    return {"corrupted_file": name,
            "serve_exit_code": refused.returncode, "serve_message": refused.stdout.strip().splitlines()[-1:]
            + refused.stderr.strip().splitlines()[-1:],
            "swap_status": swap.status_code, "swap_detail": swap.json().get("detail"),
            "search_after_refused_swap": still.status_code}


def kill_build_fault(home: Path, base: str) -> dict:
    """Build a new version of the served splade index through the API, SIGKILL it after its first shard,
    rerun it, swap it in."""
    headers = {"X-API-Key": KEY}
    probe = {"query": "vitamin D deficiency and bone fractures", "retriever": "splade", "k": 10,
             "include_text": False}
    before = httpx.post(base + "/search", json=probe, timeout=60).json()["hits"]
    manifest = (home / "indexes" / "scifact-splade" / "sparsa.json").read_text()
    request = {"name": "scifact-splade-2", "kind": "splade", "dataset": "scifact"}
    job = httpx.post(base + "/indexes/build", headers=headers, json=request, timeout=60).json()
    shard = home / "indexes" / ".scifact-splade-2.building" / "shards" / "000000"
    started = time.monotonic()
    while not shard.exists():
        if time.monotonic() - started > 1800:
            raise RuntimeError("the build wrote no shard in 30 min")
        time.sleep(1)
    first_shard_s = time.monotonic() - started
    os.kill(job["pid"], signal.SIGKILL)
    time.sleep(2)
    status = httpx.get(f"{base}/indexes/jobs/{job['id']}", headers=headers, timeout=30).json()
    during = httpx.post(base + "/search", json=probe, timeout=60)
    unchanged = (home / "indexes" / "scifact-splade" / "sparsa.json").read_text() == manifest
    rerun = httpx.post(base + "/indexes/build", headers=headers, json=request, timeout=60).json()
    started = time.monotonic()
    while (state := httpx.get(f"{base}/indexes/jobs/{rerun['id']}", headers=headers,
                              timeout=30).json())["state"] == "running":
        time.sleep(2)
    rerun_s = time.monotonic() - started
    swap = httpx.post(base + "/indexes/swap", headers=headers,
                      json={"retriever": "splade", "name": "scifact-splade-2"}, timeout=300)
    after = httpx.post(base + "/search", json=probe, timeout=60).json()["hits"]
    return {
        "killed_after_s": round(first_shard_s, 1), "killed_job_state": status["state"],
        "killed_job_returncode": status["returncode"],
        "search_after_kill_status": during.status_code,
        "search_after_kill_identical": during.status_code == 200 and during.json()["hits"] == before,
        "published_manifest_unchanged": unchanged,
        "rerun_state": state["state"], "rerun_seconds": round(rerun_s, 1),
        "rerun_resumed": "resuming the interrupted build" in state["log_tail"] or "resuming" in
        Path(home / "indexes" / ".jobs" / f"{rerun['id']}.log").read_text(),
        "swap_status": swap.status_code,
        "search_after_swap_identical": [h["doc_id"] for h in after] == [h["doc_id"] for h in before],
    }


async def _burst(base: str, questions: list[str], mode: str, timeout: float, cpu: CpuSampler) -> dict:
    rows: list[dict] = []
    probes: dict[str, list[float]] = {"/health": [], "/metrics": []}
    done = asyncio.Event()

    async def ask(client: httpx.AsyncClient, question: str) -> None:
        sent = time.monotonic()
        response = await client.post("/qa", json={"question": question, "mode": mode})
        rows.append({"status": response.status_code, "sent": sent, "done": time.monotonic(),
                     "retry_after": response.headers.get("retry-after"), "detail": response.json()["detail"]
                     if response.status_code != 200 else None})

    async def probe(client: httpx.AsyncClient) -> None:
        while not done.is_set():
            for path, seconds in probes.items():
                started = time.monotonic()
                assert (await client.get(path)).status_code == 200
                seconds.append(time.monotonic() - started)
            await asyncio.sleep(0.25)

    limits = httpx.Limits(max_connections=len(questions) + 4)
    async with httpx.AsyncClient(base_url=base, timeout=timeout + 60, limits=limits) as client:
        sampler, prober = asyncio.create_task(cpu.run()), asyncio.create_task(probe(client))
        await asyncio.sleep(2)  # an idle stretch before the burst
        started = time.monotonic()
        await asyncio.gather(*(ask(client, q) for q in questions))
        done.set()
        await prober
        accepted = [r for r in rows if r["status"] != 503]
        last_deadline = max((r["sent"] + timeout for r in accepted), default=started)
        last_response = max(r["done"] for r in rows)
        await asyncio.sleep(max(0.0, last_deadline + 3 - time.monotonic()))
        cpu.stop.set()
        await sampler
    refused = [r for r in rows if r["status"] == 503]
    busy = cpu.busy_until()
    return {
        "burst": len(questions), "accepted": len(accepted), "refused_503": len(refused),
        "accepted_statuses": sorted(r["status"] for r in accepted),
        "refused_ms": ms([r["done"] - r["sent"] for r in refused]),
        "refused_retry_after_s": sorted({int(r["retry_after"]) for r in refused if r["retry_after"]}),
        "refused_detail_example": refused[0]["detail"] if refused else None,
        "accepted_s": [round(r["done"] - r["sent"], 2) for r in sorted(accepted, key=lambda r: r["sent"])],
        "all_accepted_within_deadline": all(r["done"] <= r["sent"] + timeout for r in accepted),
        "accepted_max_past_deadline_s": round(max(r["done"] - r["sent"] - timeout for r in accepted), 2)
        if accepted else None,
        "last_response_after_burst_s": round(last_response - started, 2),
        "last_deadline_after_burst_s": round(last_deadline - started, 2),
        "cpu_cores_idle_before": round(cpu.share(started - 2, started), 3),
        "cpu_cores_after_last_deadline": round(cpu.share(last_deadline, last_deadline + 3), 3),
        "cpu_idle_vs_last_deadline_s": round(busy - last_deadline, 2) if busy else None,
        "cpu_idle_vs_last_response_s": round(busy - last_response, 2) if busy else None,
        "probe_ms": {path: ms(seconds) for path, seconds in probes.items()},
    }


def overload(home: Path, port: int, work: Path, questions: list[str], args: argparse.Namespace) -> dict:
    """A burst of ``factor`` x the QA capacity against a server with the default limits."""
    from sparsa.api.settings import ServiceLimits

    limits = ServiceLimits()
    capacity = limits.qa_workers + limits.qa_queue
    factor, timeout, mode = args.burst_factor, args.qa_timeout, args.qa_mode
    server = Server(home, port, ["--splade", "none", "--timeout", str(timeout)], work / "overload.log")
    try:
        startup = server.wait_ready()
        started = time.monotonic()
        warm = httpx.post(server.base + "/qa", json={"question": questions[0], "mode": mode},
                          timeout=timeout + 60)
        warm_s = time.monotonic() - started
        load_before = os.getloadavg()
        result = asyncio.run(_burst(server.base, questions[1 : 1 + factor * capacity], mode, timeout,
                                    CpuSampler(server.process.pid)))
        counts = status_counts(server.base)
    finally:
        server.stop()
    return {**run_metadata((*PACKAGES, "psutil")), "startup_s": round(startup, 1), "timeout_s": timeout,
            "mode": mode,
            "qa_capacity": {"workers": limits.qa_workers, "queue": limits.qa_queue},
            "warm_up": {"status": warm.status_code, "seconds": round(warm_s, 2)}, **result,
            "server_counted": counts, "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def drops(home: Path, port: int, work: Path, queries: list[str], args: argparse.Namespace) -> dict:
    """SPLADE /search under ``--clients`` clients for ``--seconds`` on a server keeping idle connections
    ``keep_alive`` s, for each of ``--drop-keep-alive`` (0: the server's default): dropped connections
    as the client saw them (errors by kind, connections it opened) and as the server counted them."""
    from sparsa.api.settings import ServiceLimits

    runs = []
    for keep_alive in args.drop_keep_alive:
        extra = ["--bm25", "none", "--qa-model", "none", "--verify", "size"]
        extra += ["--keep-alive", str(keep_alive)] if keep_alive else []
        server = Server(home, port, extra, work / f"drops_{keep_alive}.log")
        try:
            server.wait_ready()
            row = asyncio.run(load_run(server.base, "splade", queries, args.clients, args.seconds))
        finally:
            server.stop()
        runs.append({"server_keep_alive_s": keep_alive or ServiceLimits().keep_alive_s, **row})
        print(f"drops: keep-alive {runs[-1]['server_keep_alive_s']} s: {row['requests']} requests, "
              f"client errors {row['error_kinds']}, client opened {row['client']['connections_opened']} "
              f"connections, server {row['server']['connections']}")
    return {**run_metadata(PACKAGES), "runs": runs,
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def merge(sections: dict) -> Path:
    """``sections`` (each with its own run record) into service.json; the other sections and the top-level
    meta (the run that measured them) stay."""
    path = RESULTS / "service.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **sections}, indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path,
                        default=Path(os.environ.get("SPARSA_HOME", "~/.cache/sparsa")).expanduser())
    parser.add_argument("--only", choices=SECTIONS, action="append")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--examples", type=int, default=15, help="schemathesis examples per operation")
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument("--burst-factor", type=int, default=4, help="overload: the burst in QA capacities")
    parser.add_argument("--qa-timeout", type=float, default=30.0, help="overload: the server's time limit")
    parser.add_argument("--qa-mode", default="retrieve", help="overload: the questions' QA mode")
    parser.add_argument("--key", default="overload", help="overload: its key in service.json")
    parser.add_argument("--drop-keep-alive", type=float, nargs="+", default=[5.0, 0.0],
                        help="drops: the servers' keep-alive seconds (0: the default)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    sections = args.only or list(SECTIONS)

    from sparsa.data import load_dataset

    queries = [q.text for q in
               load_dataset(Path(__file__).parents[1].parent / "shared" / "data" / "scifact").queries]
    work = Path(tempfile.mkdtemp(prefix="bench_service_"))
    if set(sections) <= {"overload", "drops"}:  # each merged into service.json as its own run record
        names = ("scifact-bm25",) * ("overload" in sections) + ("scifact-splade",) * ("drops" in sections)
        home = scratch_home(args.home, work / "home", names=names)
        results = {}
        if "overload" in sections:
            results[args.key] = overload(home, args.port, work, queries, args)
            print(json.dumps(results[args.key], indent=1))
        if "drops" in sections:
            results["drops"] = drops(home, args.port + 1, work, queries, args)
        if not args.no_save:
            print("wrote", merge(results))
        shutil.rmtree(work, ignore_errors=True)
        return
    home = scratch_home(args.home, work / "home")
    server = Server(home, args.port, ["--reranker", "query-likelihood", "--timeout", "600"],
                    work / "server.log")
    results: dict = {"sections": sections}
    try:
        results["startup_s"] = round(server.wait_ready(), 1)
        print(f"server ready in {results['startup_s']} s ({server.base})")
        if "bad_inputs" in sections:
            results["bad_inputs"] = bad_inputs(server.base)
            for row in results["bad_inputs"]:
                print(f"{row['case']:<24} {row['status']}  {row['detail']}")
        if "load" in sections:
            results["load"] = []
            for retriever in ("bm25", "splade"):
                row = asyncio.run(load_run(server.base, retriever, queries, args.clients, args.seconds))
                results["load"].append(row)
                print(f"load {retriever:<7} {row['clients']} clients {row['seconds']} s: "
                      f"{row['throughput_rps']} req/s p50 {row['latency_ms'].get('p50')} ms p99 "
                      f"{row['latency_ms'].get('p99')} ms errors {row['errors']} {row['error_kinds'] or ''}")
        if "fuzz" in sections:
            results["fuzz"] = fuzz(server.base, args.examples, work / "schemathesis.xml")
            print(f"fuzz: exit {results['fuzz']['exit_code']}, responses "
                  f"{results['fuzz']['responses_by_class']}")
        if "faults" in sections:
            results["faults"] = {"corrupt_index": corrupt_index_fault(home, server.base, args.port, work)}
            print("corrupt index:", json.dumps(results["faults"]["corrupt_index"]))
            results["faults"]["kill_build"] = kill_build_fault(home, server.base)
            print("kill -9 build:", json.dumps(results["faults"]["kill_build"]))
    finally:
        server.stop()
    if "overload" in sections:
        results[args.key] = overload(home, args.port + 2, work, queries, args)
    if "drops" in sections:
        results["drops"] = drops(home, args.port + 3, work, queries, args)
    results["notes"] = ("2-core machine shared with ~6 other jobs during the run: latency and throughput are "
                        "distorted by that load; client and server share the same two cores.")
    if not args.no_save:
        print("wrote", write_results("service", results, PACKAGES))
    shutil.copy(work / "server.log", RESULTS_LOG)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
