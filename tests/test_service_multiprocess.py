"""Several server processes share one gallery: a real gunicorn (2 worker processes) on a
free port next to the in-process app, both following Redis."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import free_port
from service_support import altered, b64, encode, head_crop, run_worker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def gunicorn_server(redis_server, redis_db, tiny_model, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("ADMIN_API_KEYS", "READ_API_KEYS")}
    env.update(REDIS_URL=redis_server.url, MODEL_PATH=str(tiny_model), TORCH_THREADS="1",
               WEB_CONCURRENCY="2", GUNICORN_BIND=f"127.0.0.1:{port}")
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        yield proc, base, tmp_path / "gunicorn.log"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
        log.close()


def _wait_healthy(proc, base: str, log: Path, timeout: float = 150.0) -> set[int]:
    """Until gunicorn answers /health (a worker only accepts once its app and model are
    loaded), then a little longer to hear from both workers; returns the pids heard."""
    deadline = time.monotonic() + timeout
    pids: set[int] = set()
    while time.monotonic() < deadline and len(pids) < 2:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            r = requests.get(f"{base}/health", timeout=5)
            if r.status_code == 200:
                pids.add(r.json()["pid"])
                deadline = min(deadline, time.monotonic() + 20)
        except requests.RequestException:
            pass
        time.sleep(0.1)
    assert pids, f"gunicorn not healthy in time:\n{log.read_text()[-3000:]}"
    return pids


def _people_seen(base: str, tries: int = 6) -> set[int]:
    """people_with_vectors as reported by several requests (they spread over the workers)."""
    return {requests.get(f"{base}/health", timeout=10).json()["gallery"]["people_with_vectors"]
            for _ in range(tries)}


def test_other_processes_see_enrollments_and_deletes(service_app_factory, gunicorn_server, redis_server,
                                                     astronaut):
    proc, base, log = gunicorn_server
    app = service_app_factory()
    client = app.test_client()
    head = head_crop(astronaut)
    response = client.post("/v1/enroll", json={"people": [
        {"name": "Alpha", "images": [b64(encode(head))]},
        {"name": "Beta", "images": [b64(altered(head, scale=0.9, brightness=1.1))]},
    ]}).json
    alpha, beta = (p["person_id"] for p in response["people"])
    _wait_healthy(proc, base, log)
    assert _people_seen(base) == {0}

    assert run_worker(redis_server.client())
    finished = time.monotonic()
    while _people_seen(base, tries=4) != {2}:  # every worker process, within a second
        assert time.monotonic() - finished < 1.0, "enrollment not visible to the other processes within 1 s"
    probe = b64(altered(head, scale=0.8, quality=60))
    remote = requests.post(f"{base}/v1/identify", json={"image": probe, "k": 5}, timeout=60).json()
    assert {m["person_id"] for m in remote["faces"][0]["matches"]} == {alpha, beta}

    # Deleted here -> never matched there, not even once, from the moment the delete returned.
    assert client.delete(f"/v1/people/{alpha}").status_code == 200
    for _ in range(2):
        remote = requests.post(f"{base}/v1/identify", json={"image": probe}, timeout=60).json()
        assert [m["person_id"] for m in remote["faces"][0]["matches"]] == [beta]
    # Deleted there -> gone here.
    assert requests.delete(f"{base}/v1/people/{beta}", timeout=30).status_code == 200
    local = client.post("/v1/identify", json={"image": probe}).json
    assert local["faces"][0]["matches"] == [] and local["faces"][0]["decision"] == "unknown"
    assert requests.get(f"{base}/v1/people/{beta}", timeout=10).status_code == 404


def test_worker_entry_point_finishes_jobs(service_app_factory, redis_server, tiny_model, astronaut):
    """``python worker.py --burst``: loads the model before work, runs the job in-process
    (no fork) with two torch threads -- the set-up that hangs a forking worker -- and exits."""
    client = service_app_factory().test_client()
    job_id = client.post("/v1/enroll", json={"name": "Via worker.py",
                                             "images": [b64(encode(head_crop(astronaut)))]}).json["job_id"]
    env = {**os.environ, "REDIS_URL": redis_server.url, "MODEL_PATH": str(tiny_model), "TORCH_THREADS": "2"}
    done = subprocess.run([sys.executable, "worker.py", "--burst"], cwd=ROOT, env=env, timeout=240,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model" in done.stderr and "loaded" in done.stderr
    view = client.get(f"/v1/jobs/{job_id}").json
    assert view["status"] == "finished" and view["summary"] == {"enrolled": 1}, view
