"""Enrollment through a real RQ worker, then identification through the Flask app."""
from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from rq import Queue
from service_support import altered, b64, encode, head_crop, run_worker

from index import mean_embedding
from service.jobs import JOB_SERIALIZER


@pytest.fixture
def app(service_app_factory):
    return service_app_factory()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def face_jpeg(astronaut) -> bytes:
    return encode(head_crop(astronaut), quality=95)


def test_enroll_via_worker_then_identify(app, client, redis_server, redis_db, face_jpeg, astronaut):
    blank = encode(np.full((120, 120, 3), 200, np.uint8))
    response = client.post("/v1/enroll", json={"people": [
        {"name": "Eileen Collins", "metadata": {"role": "commander"}, "images": [b64(face_jpeg), b64(face_jpeg)]},
        {"name": "Nobody", "images": [b64(blank), b64(b"not an image at all")]},
    ]})
    assert response.status_code == 202, response.json
    body = response.json
    assert response.headers["Location"] == f"/v1/jobs/{body['job_id']}"
    pid, nobody = body["people"][0]["person_id"], body["people"][1]["person_id"]
    queued = client.get(response.headers["Location"]).json
    assert queued["status"] == "queued" and queued["progress"] == {"done": 0, "total": 4}

    assert run_worker(redis_server.client())
    job = client.get(response.headers["Location"]).json
    assert job["status"] == "finished", job
    assert job["progress"] == {"done": 4, "total": 4}
    statuses = [(r["person_id"], r["status"]) for r in job["results"]]
    assert statuses == [(pid, "enrolled"), (pid, "duplicate"), (nobody, "no_face"), (nobody, "unreadable")]
    assert job["summary"] == {"enrolled": 1, "duplicate": 1, "no_face": 1, "unreadable": 1}
    assert not redis_db.keys("fr:upload:*"), "uploads are dropped once processed"

    person = client.get(f"/v1/people/{pid}").json
    assert person["image_count"] == 1 and person["metadata"] == {"role": "commander"}
    assert person["images"][0]["image_hash"] == job["results"][0]["image_hash"]
    listing = client.get("/v1/people").json
    assert [(p["name"], p["image_count"]) for p in listing["people"]] == [("Eileen Collins", 1), ("Nobody", 0)]

    # A resized, recompressed copy (different bytes) is recognised; multipart this time.
    copy = altered(head_crop(astronaut))
    result = client.post("/v1/identify", data={"image": (io.BytesIO(copy), "copy.jpg")},
                         content_type="multipart/form-data").json
    assert len(result["faces"]) == 1
    face = result["faces"][0]
    assert face["decision"] == "match" and face["person"]["person_id"] == pid
    assert face["person"]["name"] == "Eileen Collins"
    assert face["matches"][0]["cosine"] >= result["threshold"] == pytest.approx(app.extensions["facerec"].recognizer.threshold)
    assert face["probability"] > 0.9 and len(face["box"]) == 4

    # Below the threshold the answer is "unknown" (the tiny test model cannot tell real
    # strangers apart, so the stranger is simulated by demanding more similarity than exists).
    cos = face["matches"][0]["cosine"]
    strict = client.post("/v1/identify", json={"image": b64(copy), "threshold": min(1.0, cos + 1e-4), "k": 1}).json
    assert strict["faces"][0]["decision"] == "unknown" and strict["faces"][0]["person"] is None
    assert strict["threshold_source"] == "request" and len(strict["faces"][0]["matches"]) == 1

    # Verify: two photos, and a photo against the enrolled person.
    same = client.post("/v1/verify", json={"image": b64(copy), "image2": b64(face_jpeg)}).json
    assert same["same"] is True and same["cosine"] >= same["threshold"]
    against = client.post("/v1/verify", json={"image": b64(copy), "person_id": pid}).json
    assert against["same"] is True and against["person"]["person_id"] == pid
    no_images = client.post("/v1/verify", json={"image": b64(copy), "person_id": nobody})
    assert no_images.status_code == 409


def test_identify_no_face_is_empty_and_gallery_empty_is_unknown(client, face_jpeg):
    empty = client.post("/v1/identify", json={"image": b64(encode(np.zeros((64, 64, 3), np.uint8)))})
    assert empty.status_code == 200 and empty.json["faces"] == []
    nobody = client.post("/v1/identify", json={"image": b64(face_jpeg)}).json
    assert nobody["faces"][0]["decision"] == "unknown" and nobody["faces"][0]["matches"] == []


def test_sync_enroll_remove_image_and_delete(app, client, face_jpeg, astronaut):
    pid = client.post("/v1/people", json={"name": "Ada", "person_id": "staff-0042"}).json["person_id"]
    assert pid == "staff-0042"
    first = client.post(f"/v1/people/{pid}/images", json={"image": b64(face_jpeg)})
    assert first.status_code == 201 and first.json["status"] == "enrolled"
    again = client.post(f"/v1/people/{pid}/images", json={"image": b64(face_jpeg)})
    assert again.status_code == 200 and again.json["status"] == "duplicate"
    assert again.json["person"]["image_count"] == 1
    cache = app.extensions["facerec"].cache
    assert cache.person_vector(pid) is not None

    removed = client.delete(f"/v1/people/{pid}/images/{first.json['image_hash']}")
    assert removed.status_code == 200 and removed.json["person"]["image_count"] == 0
    assert cache.person_vector(pid) is None  # no images: not matchable

    client.post(f"/v1/people/{pid}/images", json={"image": b64(face_jpeg)})
    assert client.delete(f"/v1/people/{pid}").json == {"deleted": True, "person_id": pid}
    assert client.get(f"/v1/people/{pid}").status_code == 404
    assert len(cache) == 0
    result = client.post("/v1/identify", json={"image": b64(altered(head_crop(astronaut)))}).json
    assert result["faces"][0]["matches"] == []


def test_several_faces_and_too_small_policy(client, astronaut):
    """The product's policy (recognizer.enrollment): the largest face is enrolled and the
    result says how many faces there were; a face under MIN_ENROLL_FACE_SIZE is refused."""
    from PIL import Image

    head = head_crop(astronaut)
    pid = client.post("/v1/people", json={"name": "Group"}).json["person_id"]
    small = np.asarray(Image.fromarray(head).resize((115, 120)))
    two_faces = np.concatenate([head, np.pad(small, ((0, 120), (0, 0), (0, 0)))], axis=1)
    tiny = np.asarray(Image.fromarray(head).resize((80, 84)))  # face about 30 px: found, but too small
    two = client.post(f"/v1/people/{pid}/images", json={"image": b64(encode(two_faces))})
    assert two.status_code == 201 and two.json["faces_found"] == 2, two.json
    assert "largest" in two.json["message"] and two.json["box"][2] <= head.shape[1]  # the big face, on the left
    little = client.post(f"/v1/people/{pid}/images", json={"image": b64(encode(np.pad(tiny, ((40, 40), (40, 40), (0, 0)))))})
    assert little.status_code == 422 and little.json["error"] == "too_small", little.json
    assert client.get(f"/v1/people/{pid}").json["image_count"] == 1


def test_two_workers_enroll_one_person_concurrently(app, client, redis_server, redis_db, face_jpeg, astronaut):
    """Two jobs for the same person, worked by two SimpleWorkers in two threads at once:
    both images counted, and every process's mean vector is the mean of both."""
    pid = client.post("/v1/people", json={"name": "Twin jobs"}).json["person_id"]
    other = altered(head_crop(astronaut), scale=0.9, quality=80, brightness=1.15)
    jobs = [client.post("/v1/enroll", json={"people": [{"person_id": pid, "images": [b64(img)]}]}).json["job_id"]
            for img in (face_jpeg, other)]
    assert Queue("enroll", connection=redis_db).count == 2
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            barrier.wait(timeout=30)
            run_worker(redis_server.client(), name=name)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads)
    for job_id in jobs:
        assert client.get(f"/v1/jobs/{job_id}").json["summary"] == {"enrolled": 1}
    assert client.get(f"/v1/people/{pid}").json["image_count"] == 2

    svc = app.extensions["facerec"]
    stored = svc.store.embeddings(pid)
    assert stored.shape == (2, svc.recognizer.dim)
    expected = mean_embedding(np.stack([f.embedding for f in map(lambda b: svc.recognizer.analyze(b)[0], (face_jpeg, other))]))
    vector = svc.cache.person_vector(pid)
    np.testing.assert_allclose(vector, mean_embedding(stored), atol=1e-6)
    np.testing.assert_allclose(vector, expected, atol=1e-4)


def test_store_writes_are_atomic_under_contention(app, redis_server):
    """Eight threads adding images to one person at the same time lose nothing (Lua writes)."""
    from service.store import GalleryStore

    svc = app.extensions["facerec"]
    pid = svc.store.create_person("Busy").person_id
    rng = np.random.default_rng(0)

    def add(worker: int) -> None:
        store = GalleryStore(redis_server.client(), svc.store.model_version, svc.store.dim)
        for n in range(40):
            vec = rng.standard_normal(svc.store.dim).astype(np.float32)
            store.add_image(pid, f"{worker:032x}{n:032x}", vec / np.linalg.norm(vec), {"n": n})

    threads = [threading.Thread(target=add, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert svc.store.get_person(pid).image_count == 320
    assert svc.store.marker().gen == 1 + 320  # one create, 320 additions: every bump counted
    vector = svc.cache.person_vector(pid)
    np.testing.assert_allclose(vector, mean_embedding(svc.store.embeddings(pid)), atol=1e-6)


def test_job_is_enqueued_with_retry_and_result_ttl(client, redis_db, face_jpeg):
    from rq.job import Job

    job_id = client.post("/v1/enroll", json={"name": "Retry", "images": [b64(face_jpeg)]}).json["job_id"]
    job = Job.fetch(job_id, connection=redis_db, serializer=JOB_SERIALIZER)
    assert job.retries_left == 3 and job.retry_intervals == [0, 30, 120]
    assert job.result_ttl == 24 * 3600
    assert len(job.kwargs["spec"]["items"]) == 1 and "upload" in job.kwargs["spec"]["items"][0]
    assert len(redis_db.get(job.kwargs["spec"]["items"][0]["upload"])) == len(face_jpeg)
    assert 0 < redis_db.ttl(job.kwargs["spec"]["items"][0]["upload"]) <= 24 * 3600


def test_a_retried_job_skips_what_it_already_did(service_app_factory, redis_server, redis_db, face_jpeg, monkeypatch):
    """A Redis error half-way fails the attempt; the retry finishes the rest without
    reporting its own earlier work as a duplicate. (Chunks of one image, so the first
    attempt records the first image before the outage.)"""
    import redis as redis_lib

    from service import store as store_module

    client = service_app_factory(ENROLL_EMBED_BATCH=1).test_client()

    response = client.post("/v1/enroll", json={"name": "Flaky", "images": [b64(face_jpeg), b64(b"junk")]}).json
    original = store_module.GalleryStore.job_chunk
    calls = {"n": 0}

    def flaky(self, job_id, indices, uploads):
        calls["n"] += 1
        if calls["n"] == 2:
            raise redis_lib.ConnectionError("simulated outage")
        return original(self, job_id, indices, uploads)

    monkeypatch.setattr(store_module.GalleryStore, "job_chunk", flaky)
    from rq.job import Job

    job = Job.fetch(response["job_id"], connection=redis_db, serializer=JOB_SERIALIZER)
    job.retry_intervals = [0]  # retry at once (no scheduler in a burst test)
    job.save()
    run_worker(redis_server.client())
    view = client.get(f"/v1/jobs/{response['job_id']}").json
    assert view["status"] == "finished", view
    assert [r["status"] for r in view["results"]] == ["enrolled", "unreadable"]
    assert view["retries_left"] == 2
    assert calls["n"] == 3, "the retry read only the upload it had not finished"


def test_a_job_embeds_its_faces_in_chunks(service_app_factory, redis_server, face_jpeg, astronaut, monkeypatch):
    """ENROLL_EMBED_BATCH faces go through the model together; results, order and progress
    are what one-at-a-time enrollment gives."""
    from recognizer import Recognizer

    client = service_app_factory(ENROLL_EMBED_BATCH=3).test_client()
    faces = [encode(head_crop(astronaut), quality=q) for q in (95, 90, 85, 80, 75)]  # 5 distinct files
    blank = encode(np.full((120, 120, 3), 200, np.uint8))
    images = [faces[0], faces[1], blank, faces[2], faces[3], faces[4], faces[0]]
    batch_sizes: list[int] = []
    real_embed = Recognizer.embed

    def counting_embed(self, crops):
        batch_sizes.append(len(crops))
        return real_embed(self, crops)

    monkeypatch.setattr(Recognizer, "embed", counting_embed)
    job_id = client.post("/v1/enroll", json={"name": "Chunked", "images": [b64(i) for i in images]}).json["job_id"]
    assert run_worker(redis_server.client())
    view = client.get(f"/v1/jobs/{job_id}").json
    assert view["status"] == "finished" and view["progress"] == {"done": 7, "total": 7}
    assert [r["status"] for r in view["results"]] == ["enrolled", "enrolled", "no_face", "enrolled",
                                                      "enrolled", "enrolled", "duplicate"]
    assert [r["index"] for r in view["results"]] == list(range(7))
    # chunks [0,1,2] [3,4,5] [6]: 2 faces, then 3, and the duplicate needs no model
    assert batch_sizes == [2, 3], batch_sizes
    pid = view["results"][0]["person_id"]
    person = client.get(f"/v1/people/{pid}").json
    assert person["image_count"] == 5
    stored = {i["image_hash"] for i in person["images"]}
    assert stored == {r["image_hash"] for r in view["results"] if r["status"] == "enrolled"}


def test_enroll_into_an_existing_person_answers_with_their_name(client, face_jpeg):
    pid = client.post("/v1/people", json={"name": "Ada Lovelace"}).json["person_id"]
    as_json = client.post("/v1/enroll", json={"person_id": pid, "images": [b64(face_jpeg)]})
    assert as_json.status_code == 202, as_json.json
    assert as_json.json["people"] == [{"person_id": pid, "name": "Ada Lovelace", "created": False, "images": 1}]
    as_form = client.post("/v1/enroll", data={"person_id": pid, "images": (io.BytesIO(face_jpeg), "ada.jpg")},
                          content_type="multipart/form-data")
    assert as_form.status_code == 202, as_form.json
    assert as_form.json["people"] == [{"person_id": pid, "name": "Ada Lovelace", "created": False, "images": 1}]


def test_a_chunk_costs_a_few_round_trips_not_a_few_per_image(service_app_factory, redis_server, astronaut,
                                                             monkeypatch):
    """A worker reads a chunk's items, uploads and stored-photo records in two pipelines and
    writes its rows and drops its uploads in a third; only each photo's own store (one atomic
    script) is a round trip per image. Five more per image before: 7.5% of a worker's time, profiled."""
    import redis as redis_lib

    from service import jobs

    client = service_app_factory(ENROLL_EMBED_BATCH=8).test_client()
    sends: list[int] = []
    in_job = threading.local()
    real_send = redis_lib.connection.AbstractConnection.send_packed_command
    real_job = jobs.enroll_job

    def counting_send(self, command, check_health=True):
        if getattr(in_job, "on", False):  # the job's own thread only, not its heartbeat
            sends[-1] += 1
        return real_send(self, command, check_health)

    def counted_job(spec):
        sends.append(0)
        in_job.on = True
        try:
            return real_job(spec)
        finally:
            in_job.on = False

    monkeypatch.setattr(redis_lib.connection.AbstractConnection, "send_packed_command", counting_send)
    monkeypatch.setattr(jobs, "enroll_job", counted_job)
    faces = [encode(head_crop(astronaut), quality=q) for q in (95, 90, 85, 80, 75, 70, 65, 60)]  # 8 distinct files
    for images in (faces[:2], faces[2:]):  # one chunk each: 2 photos, then 6
        job_id = client.post("/v1/enroll", json={"name": "Rounds", "images": [b64(i) for i in images]}).json["job_id"]
        assert run_worker(redis_server.client())
        assert [r["status"] for r in client.get(f"/v1/jobs/{job_id}").json["results"]] == ["enrolled"] * len(images)
    assert len(sends) == 2, sends
    extra = sends[1] - sends[0]  # what 4 more photos in the chunk cost
    assert extra <= 4 + 1, f"{extra} round trips for 4 more photos ({sends})"
