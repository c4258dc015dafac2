"""Bad input, API keys, /metrics and /openapi.json."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from service_support import b64, encode, gallery_snapshot, head_crop, parse_prometheus

ADMIN, READ = "admin-secret-1", "read-secret-1"


@pytest.fixture
def app(service_app_factory):
    # Small limits so that "too large" inputs stay cheap to build. Rate limits off: these tests send
    # hundreds of requests a second on a quiet machine (the limits have tests of their own).
    return service_app_factory(MAX_IMAGE_BYTES=300_000, MAX_IMAGE_PIXELS=1_000_000, MAX_CONTENT_LENGTH=1_000_000,
                               MAX_IMAGES_PER_REQUEST=5, RATE_LIMIT="off")


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def face_jpeg(astronaut) -> bytes:
    return encode(head_crop(astronaut), quality=90)


def _multipart(**fields):
    data = {}
    for key, value in fields.items():
        data[key] = (io.BytesIO(value), f"{key}.jpg") if isinstance(value, bytes) else value
    return {"data": data, "content_type": "multipart/form-data"}


def test_bad_inputs_give_4xx_and_change_nothing(app, client, redis_db, face_jpeg):
    svc = app.extensions["facerec"]
    pid = client.post("/v1/people", json={"name": "Existing"}).json["person_id"]
    enrolled = client.post(f"/v1/people/{pid}/images", json={"image": b64(face_jpeg)})
    assert enrolled.status_code == 201
    before = gallery_snapshot(redis_db)

    truncated = face_jpeg[: len(face_jpeg) // 2]
    huge_bytes = face_jpeg + b"\0" * 300_000
    bomb = encode(np.zeros((1001, 1000, 3), np.uint8), "PNG")  # 1.001 MP, a few KB
    blank = encode(np.full((100, 100, 3), 128, np.uint8))
    cases = [
        # (method, url, kwargs, status, error code)
        ("post", "/v1/identify", {"json": {"image": b64(b"hello, not an image")}}, 400, "bad_image"),
        ("post", "/v1/identify", {"json": {"image": b64(truncated)}}, 400, "bad_image"),
        ("post", "/v1/identify", _multipart(image=truncated), 400, "bad_image"),
        ("post", "/v1/identify", {"json": {"image": b64(b"")}}, 400, "bad_image"),
        ("post", "/v1/identify", {"json": {"image": b64(huge_bytes)}}, 413, "image_too_large"),
        ("post", "/v1/identify", _multipart(image=huge_bytes), 413, "image_too_large"),
        ("post", "/v1/identify", {"json": {"image": b64(bomb)}}, 413, "image_too_large"),
        ("post", "/v1/identify", {"json": {"image": "%%% not base64 %%%"}}, 400, "invalid_request"),
        ("post", "/v1/identify", {"json": {"image": 12}}, 400, "invalid_request"),
        ("post", "/v1/identify", {"json": {}}, 400, "invalid_request"),
        ("post", "/v1/identify", {"json": [1, 2]}, 400, "invalid_request"),
        ("post", "/v1/identify", {"data": "{not json", "content_type": "application/json"}, 400, "invalid_request"),
        ("post", "/v1/identify", {"json": {"image": b64(face_jpeg), "k": "three"}}, 400, "invalid_request"),
        ("post", "/v1/identify", {"json": {"image": b64(face_jpeg), "k": 0}}, 400, "invalid_request"),
        ("post", "/v1/identify", {"json": {"image": b64(face_jpeg), "k": 2.5}}, 400, "invalid_request"),
        ("post", "/v1/identify", {"json": {"image": b64(face_jpeg), "k": True}}, 400, "invalid_request"),
        ("post", "/v1/identify", {"json": {"image": b64(face_jpeg), "threshold": 1.5}}, 400, "invalid_request"),
        ("post", "/v1/identify", {"json": {"image": b64(face_jpeg), "threshold": "high"}}, 400, "invalid_request"),
        ("post", "/v1/identify?threshold=-2", {"json": {"image": b64(face_jpeg)}}, 400, "invalid_request"),
        ("post", "/v1/identify", _multipart(image=face_jpeg, k="x"), 400, "invalid_request"),
        ("post", "/v1/identify", {"data": face_jpeg, "content_type": "image/jpeg"}, 415, "unsupported_media_type"),
        ("post", "/v1/identify", {"data": "image=abc", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ("post", "/v1/identify", {"data": b"x" * 1_100_000, "content_type": "application/json"}, 413, "request_too_large"),
        ("post", "/v1/verify", {"json": {"image": b64(blank), "image2": b64(face_jpeg)}}, 422, "no_face"),
        ("post", "/v1/verify", {"json": {"image": b64(face_jpeg)}}, 400, "invalid_request"),
        ("post", "/v1/verify", {"json": {"image": b64(face_jpeg), "image2": b64(face_jpeg), "person_id": pid}},
         400, "invalid_request"),
        ("post", "/v1/verify", {"json": {"image": b64(face_jpeg), "person_id": "nobody"}}, 404, "person_not_found"),
        ("post", "/v1/people", {"json": {"metadata": {"a": 1}}}, 400, "invalid_request"),
        ("post", "/v1/people", {"json": {"name": "  "}}, 400, "invalid_request"),
        ("post", "/v1/people", {"json": {"name": "X", "metadata": [1]}}, 400, "invalid_request"),
        ("post", "/v1/people", {"json": {"name": "X", "person_id": "bad id!"}}, 400, "invalid_request"),
        ("post", "/v1/people", {"json": {"name": "X", "person_id": pid}}, 409, "conflict"),
        ("post", "/v1/people", {"data": "name=X", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ("post", "/v1/enroll", {"json": {"people": [{"person_id": "ghost", "images": [b64(face_jpeg)]}]}},
         404, "person_not_found"),
        # one good entry and one bad: nothing is created for the good one either
        ("post", "/v1/enroll", {"json": {"people": [{"name": "New", "images": [b64(face_jpeg)]},
                                                    {"person_id": "ghost", "images": [b64(face_jpeg)]}]}},
         404, "person_not_found"),
        ("post", "/v1/enroll", {"json": {"people": [{"images": [b64(face_jpeg)]}]}}, 400, "invalid_request"),
        ("post", "/v1/enroll", {"json": {"people": [{"name": "A", "person_id": pid, "images": [b64(face_jpeg)]}]}},
         400, "invalid_request"),
        ("post", "/v1/enroll", {"json": {"people": [{"name": "A", "images": []}]}}, 400, "invalid_request"),
        ("post", "/v1/enroll", {"json": {"people": [{"name": "A", "images": "abc"}]}}, 400, "invalid_request"),
        ("post", "/v1/enroll", {"json": {"people": [{"name": "A", "images": ["@@@"]}]}}, 400, "invalid_request"),
        ("post", "/v1/enroll", {"json": {"people": [{"name": "A", "images": [b64(huge_bytes)]}]}},
         413, "image_too_large"),
        ("post", "/v1/enroll", {"json": {"people": [{"name": "A", "images": [b64(bomb)]}]}}, 413, "image_too_large"),
        ("post", "/v1/enroll", {"json": {"people": [{"name": "A", "images": [b64(blank)] * 6}]}},
         400, "invalid_request"),
        ("post", "/v1/enroll", {"json": {"people": []}}, 400, "invalid_request"),
        ("post", "/v1/enroll", _multipart(person_id="ghost", images=face_jpeg), 404, "person_not_found"),
        ("post", "/v1/enroll", _multipart(name="A"), 400, "invalid_request"),
        ("post", "/v1/enroll", _multipart(name="A", metadata="{oops", images=face_jpeg), 400, "invalid_request"),
        ("post", "/v1/enroll", {"data": "x", "content_type": "text/csv"}, 415, "unsupported_media_type"),
        ("post", f"/v1/people/{pid}/images", {"json": {"image": b64(blank)}}, 422, "no_face"),
        ("post", f"/v1/people/{pid}/images", {"json": {"image": b64(truncated)}}, 400, "bad_image"),
        ("post", f"/v1/people/{pid}/images", {"json": {"image": b64(bomb)}}, 413, "image_too_large"),
        ("post", "/v1/people/ghost/images", {"json": {"image": b64(face_jpeg)}}, 404, "person_not_found"),
        ("get", "/v1/people/ghost", {}, 404, "person_not_found"),
        ("get", "/v1/people/..%2F..", {}, 404, "not_found"),
        ("get", "/v1/people?limit=0", {}, 400, "invalid_request"),
        ("get", "/v1/people?offset=-1", {}, 400, "invalid_request"),
        ("delete", "/v1/people/ghost", {}, 404, "person_not_found"),
        ("delete", f"/v1/people/{pid}/images/{'0' * 64}", {}, 404, "image_not_found"),
        ("delete", f"/v1/people/{pid}/images/not-a-hash", {}, 404, "image_not_found"),
        ("get", "/v1/jobs/0123456789abcdef0123456789abcdef", {}, 404, "job_not_found"),
        ("get", "/v1/jobs/not a job", {}, 404, "job_not_found"),
        ("get", "/v1/nothing-here", {}, 404, "not_found"),
        ("put", "/v1/identify", {}, 405, "method_not_allowed"),
        ("delete", "/v1/people", {}, 405, "method_not_allowed"),
    ]
    failures = []
    for method, url, kwargs, status, code in cases:
        response = getattr(client, method)(url, **kwargs)
        body = response.get_json(silent=True)
        if response.status_code != status or not body or body.get("error") != code or not body.get("message"):
            failures.append((method, url, status, code, response.status_code, body))
    assert not failures, "\n".join(map(str, failures))
    assert gallery_snapshot(redis_db) == before, "a rejected request changed what is stored"
    assert svc.store.get_person(pid).image_count == 1
    assert svc.queue.count == 0


def test_bulk_enroll_multipart_queues_a_job(client, redis_db, face_jpeg):
    pid = client.post("/v1/people", data={"name": "Form person", "metadata": '{"desk": 3}'}).json["person_id"]
    response = client.post("/v1/enroll", data={"person_id": pid,
                                               "images": [(io.BytesIO(face_jpeg), "a.jpg"),
                                                          (io.BytesIO(face_jpeg[:-10]), "b.jpg")]},
                           content_type="multipart/form-data")
    assert response.status_code == 202
    job = client.get(response.headers["Location"]).json
    assert job["status"] == "queued" and job["progress"]["total"] == 2
    assert client.get(f"/v1/people/{pid}").json["metadata"] == {"desk": 3}


def test_api_keys(service_app_factory, face_jpeg):
    app = service_app_factory(ADMIN_API_KEYS=ADMIN, READ_API_KEYS=f"{READ},read-secret-2")
    client = app.test_client()
    admin = {"X-API-Key": ADMIN}
    read = {"Authorization": f"Bearer {READ}"}

    no_key = client.get("/v1/people")
    assert no_key.status_code == 401 and no_key.json["error"] == "unauthorized"
    assert "Bearer" in no_key.headers["WWW-Authenticate"]
    assert client.get("/v1/people", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/v1/people", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get("/v1/people", headers=read).status_code == 200
    assert client.get("/v1/people", headers={"X-API-Key": "read-secret-2"}).status_code == 200
    assert client.get("/v1/people", headers=admin).status_code == 200  # admin may read

    denied = client.post("/v1/people", json={"name": "X"}, headers=read)
    assert denied.status_code == 403 and denied.json["error"] == "forbidden"
    assert client.post("/v1/people", json={"name": "X"}).status_code == 401
    created = client.post("/v1/people", json={"name": "X"}, headers=admin)
    assert created.status_code == 201
    pid = created.json["person_id"]
    for method, url, kwargs in [
        ("post", "/v1/enroll", {"json": {"person_id": pid, "images": [b64(face_jpeg)]}}),
        ("post", f"/v1/people/{pid}/images", {"json": {"image": b64(face_jpeg)}}),
        ("delete", f"/v1/people/{pid}/images/{'0' * 64}", {}),
        ("delete", f"/v1/people/{pid}", {}),
    ]:
        assert getattr(client, method)(url, headers=read, **kwargs).status_code == 403, url
        assert getattr(client, method)(url, **kwargs).status_code == 401, url
    for url in ("/v1/identify", "/v1/verify"):
        assert client.post(url, json={"image": b64(face_jpeg)}).status_code == 401
    assert client.post("/v1/identify", json={"image": b64(face_jpeg)}, headers=read).status_code == 200
    assert client.get("/v1/jobs/abc", headers=read).status_code == 404
    assert client.get("/v1/jobs/abc").status_code == 401
    # Operational endpoints stay open for load balancers and scrapers.
    for url in ("/health", "/metrics", "/openapi.json"):
        assert client.get(url).status_code == 200, url
    assert client.get(f"/v1/people/{pid}", headers=admin).status_code == 200


def test_open_mode_warns_loudly(service_app_factory, caplog):
    with caplog.at_level("WARNING"):
        service_app_factory()
    assert any("NO API KEYS CONFIGURED" in r.getMessage() for r in caplog.records)


def test_metrics_parse(app, client, face_jpeg):
    client.get("/v1/people")
    client.get("/v1/people")
    client.get("/v1/people/ghost")
    client.post("/v1/identify", json={"image": b64(face_jpeg)})
    client.post("/v1/people", json={"name": "Metric"})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    families = parse_prometheus(response.get_data(as_text=True))
    assert families["facerec_http_requests_total"]["type"] == "counter"
    assert families["facerec_http_request_duration_seconds"]["type"] == "histogram"
    counts = {(lb["route"], lb["method"], lb["status"]): v
              for _, lb, v in families["facerec_http_requests_total"]["samples"]}
    assert counts[("/v1/people", "GET", "200")] == 2
    assert counts[("/v1/people/<person_id>", "GET", "404")] == 1
    assert counts[("/v1/identify", "POST", "200")] == 1
    gauges = {name: fam["samples"] for name, fam in families.items() if fam["type"] == "gauge"}
    assert gauges["facerec_gallery_people"][0][2] == 1
    assert gauges["facerec_enroll_queue_depth"][0][2] == 0
    assert gauges["facerec_redis_up"][0][2] == 1
    assert gauges["facerec_model_info"][0][1]["version"] == app.extensions["facerec"].recognizer.version


def test_openapi_paths_match_the_routes(app, client):
    doc = client.get("/openapi.json").json
    assert doc["openapi"].startswith("3.")
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    documented = {path: {m for m in item if m in ("get", "post", "put", "patch", "delete")}
                  for path, item in doc["paths"].items()}
    assert documented == routes
    # Path parameters are declared for every templated path.
    for path, item in doc["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        declared = {p["name"] for p in item.get("parameters", [])}
        assert names == declared, path
    # Documented security matches what the views enforce.
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            op = doc["paths"][path][method.lower()]
            protected = getattr(view, "required_role", None) is not None
            assert (op.get("security", doc["security"]) != []) == protected, (path, method)


def test_health(app, client):
    body = client.get("/health").json
    assert body["status"] == "ok" and body["redis"]["reachable"] is True
    assert body["model_version"] == app.extensions["facerec"].recognizer.version
    assert body["gallery"] == {"people": 0, "people_with_vectors": 0, "generation": 0}
    assert body["score_norm"] == {"server": "opt_in", "calibrated": False, "active": False}  # the tiny model has none


def test_health_and_requests_when_redis_is_down(service_app_factory, service_recognizer, face_jpeg):
    from conftest import free_port

    app = service_app_factory(url=f"redis://127.0.0.1:{free_port()}/0", REDIS_SOCKET_TIMEOUT=0.5)
    client = app.test_client()
    health = client.get("/health")
    assert health.status_code == 503 and health.json["redis"]["reachable"] is False
    people = client.get("/v1/people")
    assert people.status_code == 503 and people.json["error"] == "unavailable"
    identify = client.post("/v1/identify", json={"image": b64(face_jpeg)})
    assert identify.status_code == 503 and identify.json["error"] == "unavailable"
    assert client.get("/metrics").status_code == 200
