"""Supervised build jobs (issue 26, item 4): a job table that survives restarts, a build limit, builds
that die with the server (on shutdown and after kill -9) and are reported so after a restart, rotated
and pruned logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparsa.api.settings import ServiceLimits
from tests.api.conftest import API_KEY, service_config, wait_until
from tests.api.live_server import free_port as _free_port

pytestmark = [pytest.mark.java, pytest.mark.slow]
KEY = {"X-API-Key": API_KEY}



def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def app_client(root: Path, shared_data: Path, **limits):
    import dataclasses

    from fastapi.testclient import TestClient

    from sparsa.api import ServiceState, create_app

    config = service_config(root, shared_data, indexes={"bm25": root / "bm25"})
    config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, **limits))
    state = ServiceState(config).load(strict=True)
    return TestClient(create_app(config, state), raise_server_exceptions=False)


def test_the_job_table_survives_a_restart_and_builds_are_limited(spare_index, shared_data):
    with app_client(spare_index, shared_data) as client:
        job = client.post("/indexes/build", headers=KEY,
                          json={"name": "cran-a", "dataset": "cranfield"}).json()
        status = lambda c: c.get(f"/indexes/jobs/{job['id']}", headers=KEY).json()
        assert wait_until(lambda: status(client)["state"] != "running", 240), status(client)
        finished = status(client)
        assert finished["state"] == "succeeded" and finished["returncode"] == 0, finished
        assert "indexed 120 documents" in finished["log_tail"]
    assert (spare_index / ".jobs" / "jobs.json").is_file()
    with app_client(spare_index, shared_data, max_builds=1) as client:  # a new server on the same folder
        assert status(client) == finished
        slow = client.post("/indexes/build", headers=KEY, json={"name": "cran-d", "kind": "dense",
                                                                 "dataset": "cranfield"})
        assert slow.status_code == 202
        again = client.post("/indexes/build", headers=KEY, json={"name": "cran-d", "kind": "dense",
                                                                  "dataset": "cranfield"})
        assert again.status_code == 409 and "already running" in again.json()["detail"]
        over = client.post("/indexes/build", headers=KEY, json={"name": "cran-b", "dataset": "cranfield"})
        assert over.status_code == 429 and over.headers["Retry-After"] == "30"
        assert over.json()["detail"] == "1 build(s) running, the limit is 1; retry when one has finished"
        pid = slow.json()["pid"]
        assert _alive(pid)
        # The build gets the server's build_threads (half the cores by default), not every core.
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--threads") + 1] == str(ServiceLimits().build_threads).encode()
    # The server stopped (lifespan shutdown): its build's process group went with it.
    assert wait_until(lambda: not _alive(pid), 10)
    with app_client(spare_index, shared_data) as client:
        stopped = client.get(f"/indexes/jobs/{slow.json()['id']}", headers=KEY).json()
        assert stopped["state"] == "failed" and stopped["finished_at"]
        assert stopped["detail"].startswith("the build process ended without a result")


def test_a_build_dies_with_a_killed_server_and_the_restarted_server_reports_it(spare_index, shared_data,
                                                                               tmp_path):
    import httpx

    home = tmp_path / "home"
    home.mkdir()
    (home / "indexes").symlink_to(spare_index)
    real_home = Path(os.environ.get("SPARSA_HOME", "~/.cache/sparsa")).expanduser()
    (home / "models").symlink_to(real_home / "models")
    env = {**os.environ, "SPARSA_HOME": str(home), "SPARSA_DATA_DIR": str(shared_data)}

    def start(log: Path):
        port = _free_port()
        command = [sys.executable, "-m", "sparsa", "serve", "--bm25", "bm25", "--splade", "none", "--dataset",
                   "cranfield", "--qa-model", "none", "--port", str(port), "--api-key", API_KEY]
        server = subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert server.poll() is None, log.read_text()
            try:
                return httpx.get(base + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(ready, 180, 0.3)
        return server, base

    server, base = start(tmp_path / "first.log")
    try:
        job = httpx.post(base + "/indexes/build", headers=KEY, timeout=30,
                         json={"name": "cran-d", "kind": "dense", "dataset": "cranfield"}).json()
        assert job["state"] == "running" and _alive(job["pid"])
        server.send_signal(signal.SIGKILL)
        server.wait()
        killed = time.monotonic()
        assert wait_until(lambda: not _alive(job["pid"]), 5), "the build outlived its server"
        assert time.monotonic() - killed < 5
    finally:
        if server.poll() is None:
            server.kill()
    server, base = start(tmp_path / "second.log")
    try:
        after = httpx.get(f"{base}/indexes/jobs/{job['id']}", headers=KEY, timeout=30).json()
        assert after["id"] == job["id"] and after["state"] == "failed"
        assert after["detail"].startswith("the build process ended without a result")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)


def test_build_logs_rotate_and_old_ones_are_pruned(spare_index, shared_data, tmp_path):
    from sparsa.api.build_worker import RotatingSink

    sink = RotatingSink(tmp_path / "x.log", limit=1024)
    for _ in range(5):
        sink.write(b"y" * 700)
    assert (tmp_path / "x.log.1").stat().st_size <= 1024 + 700 and (tmp_path / "x.log").stat().st_size <= 1400
    (spare_index / "broken").mkdir()  # not an index: each build of it fails quickly
    ids = []
    with app_client(spare_index, shared_data, keep_job_logs=1) as client:
        for _ in range(2):
            job = client.post("/indexes/build", headers=KEY,
                              json={"name": "broken", "dataset": "cranfield", "replace": True}).json()
            ids.append(job["id"])
            status = lambda j=job["id"]: client.get(f"/indexes/jobs/{j}", headers=KEY).json()
            assert wait_until(lambda s=status: s()["state"] != "running", 120), status()
            assert status()["returncode"] == 2 and "is not a sparsa index" in status()["detail"]
        first, second = (client.get(f"/indexes/jobs/{i}", headers=KEY).json() for i in ids)
    assert first["state"] == second["state"] == "failed"  # both ids stay valid
    assert first["log_tail"] == "" and "is not a sparsa index" in second["log_tail"]  # the newest log only
    assert sorted(p.name for p in (spare_index / ".jobs").glob("*.log*")) == [f"{ids[1]}.log"]


def test_a_second_server_on_the_same_folder_adopts_a_running_build(spare_index, shared_data):
    """A server that finds a build running (started by another server on this index folder, or by itself
    just before a restart) follows it by pid and reads its result from the status file."""
    with app_client(spare_index, shared_data) as first, app_client(spare_index, shared_data) as second:
        job = first.post("/indexes/build", headers=KEY, json={"name": "cran-d", "kind": "dense",
                                                                "dataset": "cranfield"}).json()
        adopted = second.get(f"/indexes/jobs/{job['id']}", headers=KEY).json()
        assert adopted["state"] == "running" and adopted["pid"] == job["pid"]
        status = lambda: second.get(f"/indexes/jobs/{job['id']}", headers=KEY).json()
        assert wait_until(lambda: status()["state"] != "running", 300), status()
        assert status()["state"] == "succeeded" and status()["returncode"] == 0, status()
