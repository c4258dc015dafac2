"""Hostile input and forged Redis data (issue 12): nothing read from Redis is unpickled,
hostile requests get a 4xx naming the cause, metrics labels stay bounded."""
from __future__ import annotations

import io
import time
import json
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


# -- hostile requests: a 4xx naming the cause, nothing stored changes ----------------------------

DEEP = 100_000  # levels: enough to make Python's json parser itself raise RecursionError


def _deep_json(levels: int = DEEP) -> str:
    return "[" * levels + "]" * levels


@pytest.fixture
def small_app(service_app_factory):
    return service_app_factory(MAX_CONTENT_LENGTH=1_000_000)


def test_deep_json_is_a_400_everywhere(small_app, redis_db, astronaut):
    from service_support import gallery_snapshot

    client = small_app.test_client()
    before = gallery_snapshot(redis_db)
    deep = _deep_json()
    photo = ("face.jpg", b"\xff\xd8 not really")
    cases = [
        ("/v1/identify", {"data": '{"image": ' + deep + "}", "content_type": "application/json"}, "body"),
        ("/v1/verify", {"data": '{"image": ' + deep + "}", "content_type": "application/json"}, "body"),
        ("/v1/people", {"data": '{"name": "x", "metadata": ' + deep + "}", "content_type": "application/json"},
         "body"),
        ("/v1/people", {"data": {"name": "x", "metadata": deep}, "content_type": "multipart/form-data"}, "metadata"),
        ("/v1/people", {"data": {"name": "x", "metadata": deep}}, "metadata"),  # form-urlencoded
        ("/v1/enroll", {"data": {"name": "x", "metadata": deep, "images": (io.BytesIO(photo[1]), photo[0])},
                        "content_type": "multipart/form-data"}, "metadata"),
        # nested deeper than we keep, though shallow enough for the parser
        ("/v1/people", {"json": {"name": "x", "metadata": {"a": json.loads(_deep_json(40))}}}, "body"),
        ("/v1/people", {"data": {"name": "x", "metadata": '{"a": ' + _deep_json(40) + "}"},
                        "content_type": "multipart/form-data"}, "metadata"),
        ("/v1/enroll", {"json": {"people": [{"name": "x", "images": [], "metadata": json.loads(_deep_json(40))}]}},
         "body"),
    ]
    for url, kwargs, field in cases:
        response = client.post(url, **kwargs)
        assert response.status_code == 400, (url, field, response.status_code, response.data[:300])
        assert "nested too deeply" in response.json["message"] and response.json["details"]["field"] == field, \
            (url, response.json)
    assert gallery_snapshot(redis_db) == before


def test_a_non_ascii_job_id_is_a_404(small_app):
    for job_id in ("ä", "１２３", "abc\u0301"):
        response = small_app.test_client().get(f"/v1/jobs/{job_id}")
        assert response.status_code == 404 and response.json["error"] == "job_not_found", (job_id, response.data)


def test_a_chunked_body_over_the_limit_is_a_413(small_app, astronaut):
    from service_support import b64, encode, head_crop

    client = small_app.test_client()
    chunked = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    over = b'{"image": "' + b"A" * 1_200_000 + b'"}'
    response = client.post("/v1/identify", input_stream=io.BytesIO(over), headers=chunked,
                           environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 413 and response.json["error"] == "request_too_large", response.data[:300]
    # Under the limit, a chunked body is read whole, as with a Content-Length.
    body = json.dumps({"image": b64(encode(head_crop(astronaut)))}).encode()
    response = client.post("/v1/identify", input_stream=io.BytesIO(body), headers=chunked,
                           environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 200 and len(response.json["faces"]) == 1, response.data[:300]


def test_metrics_labels_are_bounded(small_app, redis_db):
    client = small_app.test_client()
    key = "fr:metrics:http"
    client.get("/health")
    for i in range(300):
        client.open("/v1/people", method=f"INVENTED{i}")
        client.open(f"/no/such/path/{i}", method="GET")
    fields = {f.decode().split("\t")[0:3][0] for f in redis_db.hkeys(key)}
    routes = {f.decode().split("\t")[1] for f in redis_db.hkeys(key)}
    assert fields <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, fields
    assert "other" in fields and routes <= {"/health", "/v1/people", "unmatched"}, routes
    assert redis_db.hlen(key) <= 3 * 3 * 16, redis_db.hlen(key)  # (method, route, status) x (count, sum, bucket)


# -- floods: rate limits per key / address, a cap on model requests per process --------------------


def test_no_429_says_retry_after_zero():
    """Flask-Limiter rewrites Retry-After on every 429 as int(window end - now): 0 for the
    per-second window under steady load, and 0 for the in-flight cap's own 1 (seen through
    gunicorn: 1,873 of 1,893 429s said 0, and polite clients looped). The floor runs after the
    limiter's hook because create_app installs it first (Flask runs after-request hooks newest
    first); a hook registered after it stands in for the limiter here."""
    from flask import Flask

    from service.limits import install_retry_after_floor

    app = Flask("floor")
    install_retry_after_floor(app)

    @app.after_request
    def limiter_like(response):
        if response.status_code == 429:
            response.headers["Retry-After"] = "0"
        return response

    @app.route("/busy")
    def busy():
        return "busy", 429

    @app.route("/fine")
    def fine():
        return "ok"

    client = app.test_client()
    assert client.get("/busy").headers["Retry-After"] == "1"
    assert "Retry-After" not in client.get("/fine").headers


def test_rate_limit_per_key_and_per_address(service_app_factory, redis_db):
    app = service_app_factory(ADMIN_API_KEYS="admin-key", READ_API_KEYS="read-key,other-key",
                              RATE_LIMIT="5/minute")
    client = app.test_client()
    codes = [client.get("/v1/people", headers={"X-API-Key": "read-key"}).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    limited = client.get("/v1/people", headers={"X-API-Key": "read-key"})
    assert limited.json["error"] == "too_many_requests" and int(limited.headers["Retry-After"]) > 0
    # Another key has its own budget; health and metrics are never limited.
    assert client.get("/v1/people", headers={"X-API-Key": "other-key"}).status_code == 200
    assert all(client.get("/health").status_code == 200 for _ in range(10))
    # Without a (valid) key, the address is the bucket: invented keys buy nothing.
    codes = [client.get("/v1/people", headers={"X-API-Key": f"made-up-{i}"}).status_code for i in range(6)]
    assert codes == [401] * 5 + [429], codes
    assert client.get("/v1/people").status_code == 429
    other_address = client.get("/v1/people", environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other_address.status_code == 401
    # No credential in Redis: the key's bucket is named by a hash.
    stored = b" ".join(redis_db.keys("*ratelimit*"))
    assert stored and b"read-key" not in stored and b"other-key" not in stored


def test_model_requests_over_the_inflight_cap_get_429(service_app_factory, astronaut):
    import threading

    from service_support import b64, encode, head_crop

    app = service_app_factory(MAX_INFLIGHT=2, MAX_INFLIGHT_PER_CLIENT=1, RATE_LIMIT="off")
    entered, release = threading.Event(), threading.Event()
    recognizer = app.extensions["facerec"].recognizer
    original = recognizer.analyze

    def slow_analyze(*args, **kwargs):  # requests from these addresses hold their slot until released
        from flask import request

        if request.remote_addr in ("127.0.0.1", "10.0.0.3"):
            entered.set()
            release.wait(30)
        return original(*args, **kwargs)

    body = {"image": b64(encode(head_crop(astronaut)))}
    recognizer.analyze = slow_analyze
    try:
        first: dict = {}
        worker = threading.Thread(target=lambda: first.update(r=app.test_client().post("/v1/identify", json=body)))
        worker.start()
        assert entered.wait(30)
        busy = app.test_client().post("/v1/identify", json=body)  # the same client (address)
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "1", busy.data
        assert "MAX_INFLIGHT" in busy.json["message"]
        other = app.test_client().post("/v1/identify", json=body, environ_base={"REMOTE_ADDR": "10.0.0.2"})
        assert other.status_code == 200, other.data  # another client has a slot of its own...
        entered.clear()
        third: dict = {}
        blocker = threading.Thread(target=lambda: third.update(r=app.test_client().post(
            "/v1/identify", json=body, environ_base={"REMOTE_ADDR": "10.0.0.3"})))
        blocker.start()
        assert entered.wait(30)
        full = app.test_client().post("/v1/identify", json=body, environ_base={"REMOTE_ADDR": "10.0.0.4"})
        assert full.status_code == 429, full.data  # ... until the process's MAX_INFLIGHT are all taken
        assert app.test_client().get("/v1/people").status_code == 200  # not a model request
        release.set()
        worker.join(60)
        blocker.join(60)
    finally:
        recognizer.analyze = original
    assert first["r"].status_code == 200 and third["r"].status_code == 200
    assert app.test_client().post("/v1/identify", json=body).status_code == 200


# -- leaks: /health without a key, credentials in the access log ----------------------------------


def test_health_without_a_key_says_only_ready_or_not(service_app_factory):
    app = service_app_factory(ADMIN_API_KEYS="admin-key", READ_API_KEYS="read-key")
    client = app.test_client()
    assert client.get("/health").json == {"status": "ok"}
    assert client.get("/health", headers={"X-API-Key": "wrong"}).json == {"status": "ok"}
    detailed = client.get("/health", headers={"X-API-Key": "read-key"}).json
    assert detailed["status"] == "ok" and {"pid", "model_version", "gallery", "redis", "queue"} <= set(detailed)


def test_health_when_redis_is_down_says_only_degraded(service_app_factory):
    from conftest import free_port

    app = service_app_factory(url=f"redis://127.0.0.1:{free_port()}/0", REDIS_SOCKET_TIMEOUT=0.5,
                              ADMIN_API_KEYS="admin-key", READ_API_KEYS="read-key")
    response = app.test_client().get("/health")
    assert response.status_code == 503 and response.json == {"status": "degraded"}


def test_gunicorn_access_log_holds_no_credential(tiny_model):
    """Keys sent every way a client might (header, Bearer, Basic-auth user and password, query
    string, Referer) never reach gunicorn's access log."""
    import base64

    import requests

    from bench.service_stack import Stack

    secret, user = "read-KEY-7f3a9c", "basic-USER-51d0"
    with Stack(tiny_model) as stack:
        stack.start_redis()
        base = stack.start_gunicorn(1, 1, ADMIN_API_KEYS="admin-KEY-0b1e", READ_API_KEYS=secret, RATE_LIMIT="off")
        basic = base64.b64encode(f"{user}:{secret}".encode()).decode()
        sent = [
            requests.get(f"{base}/v1/people", headers={"X-API-Key": secret}, timeout=30),
            requests.get(f"{base}/v1/people", headers={"Authorization": f"Bearer {secret}"}, timeout=30),
            requests.get(f"{base}/v1/people", headers={"Authorization": f"Basic {basic}"}, timeout=30),
            requests.get(f"{base}/v1/people?api_key={secret}&key={user}", timeout=30),
            requests.get(f"{base}/v1/people", headers={"Referer": f"http://x/?key={secret}"}, timeout=30),
        ]
        assert [r.status_code for r in sent] == [200, 200, 401, 401, 401]
        time.sleep(0.5)
        log = stack.log_tail("gunicorn", chars=200_000)
    assert log.count('"GET /v1/people HTTP/1.1"') == 5, log[-2000:]
    assert secret not in log and user not in log and basic not in log, log[-2000:]


def test_enroll_with_images_of_the_wrong_type_is_a_400(small_app, redis_db):
    """Found by the fuzz pass: a number where the list of images goes gave a 500."""
    client = small_app.test_client()
    for images in (1.5, 7, "abc", {"a": 1}, True):
        response = client.post("/v1/enroll", json={"people": [{"name": "x", "images": images}]})
        assert response.status_code == 400, (images, response.data[:300])
        response = client.post("/v1/enroll", json={"name": "x", "images": images})
        assert response.status_code == 400, (images, response.data[:300])
