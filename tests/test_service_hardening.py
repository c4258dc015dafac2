"""Hostile input and forged Redis data (issue 12): nothing read from Redis is unpickled,
hostile requests get a 4xx naming the cause, metrics labels stay bounded."""
from __future__ import annotations

import pickle
import zlib
from pathlib import Path

import pytest
from service_support import run_worker


class _Payload:
    """Unpickling this creates ``path``: a stand-in for a command run by a forged job."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _forge_job(client, job_id: str, marker: Path, queue: str = "enroll") -> None:
    """An ``rq:job:<id>`` hash as someone with write access to Redis could plant it:
    pickled function data, meta and result, each of which runs code when unpickled."""
    payload = pickle.dumps(_Payload(marker))
    client.hset(f"rq:job:{job_id}", mapping={
        "data": zlib.compress(pickle.dumps((_Payload(marker), None, [], {}))),
        "meta": payload, "result": payload, "status": "finished", "origin": queue,
        "created_at": "2025-01-01T00:00:00.000000Z", "description": "forged",
    })


def test_the_forged_payload_runs_under_pickle(tmp_path):
    """The payload of the tests below is live: unpickled, it does create its file."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_a_forged_job_is_never_unpickled_on_poll(service_app_factory, redis_db, tmp_path):
    app = service_app_factory(ADMIN_API_KEYS="admin-key", READ_API_KEYS="read-key")
    marker = tmp_path / "ran"
    _forge_job(redis_db, "forged1", marker)
    response = app.test_client().get("/v1/jobs/forged1", headers={"X-API-Key": "read-key"})
    assert response.status_code == 404 and response.json["error"] == "job_not_found"
    assert not marker.exists(), "the API process unpickled job data read from Redis"


def test_a_forged_job_in_the_queue_is_dropped_not_run(service_app_factory, redis_server, redis_db, tmp_path):
    """A worker that dequeues a forged job id logs it, drops it and goes on working."""
    from service.jobs import JOB_SERIALIZER
    from rq import Queue

    service_app_factory()
    marker = tmp_path / "ran"
    _forge_job(redis_db, "forged2", marker)
    redis_db.rpush("rq:queue:enroll", "forged2")
    redis_db.sadd("rq:queues", "rq:queue:enroll")
    run_worker(redis_server.client())
    assert not marker.exists(), "the worker unpickled job data read from Redis"
    queue = Queue("enroll", connection=redis_db, serializer=JOB_SERIALIZER)
    assert queue.count == 0 and redis_db.llen(queue.intermediate_queue_key) == 0


def test_jobs_are_stored_as_json(service_app_factory, redis_db, astronaut):
    import json

    from service_support import b64, encode, head_crop

    client = service_app_factory().test_client()
    job_id = client.post("/v1/enroll", json={"name": "Json", "images": [b64(encode(head_crop(astronaut)))]}).json[
        "job_id"]
    stored = redis_db.hgetall(f"rq:job:{job_id}")
    func, instance, args, kwargs = json.loads(zlib.decompress(stored[b"data"]))
    assert func == "service.jobs.enroll_job" and instance is None and args == []
    assert set(kwargs["spec"]) >= {"items", "model_version", "policy"}
    assert json.loads(stored[b"meta"])["progress"] == {"done": 0, "total": 1}
