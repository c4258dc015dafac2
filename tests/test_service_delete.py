"""Deletes leave nothing behind: after deleting a person (or one photo) through the API, a scan
of every key and value in Redis finds neither their id, nor their photos' hashes, bytes or
embeddings, nor their filenames -- except the person id in the change stream, the tombstone
that tells every server process to drop them. Jobs still pending then report
``person_deleted`` / ``image_deleted`` and store nothing."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from service_support import altered, b64, encode, head_crop, run_worker, where_in_redis

CHANGES = b"fr:changes"


@pytest.fixture
def client(service_app_factory):
    return service_app_factory().test_client()


@pytest.fixture(scope="module")
def photos(astronaut) -> dict[str, bytes]:
    head = head_crop(astronaut)
    return {
        "sync": encode(head, quality=95),
        "bulk": altered(head, scale=0.9, quality=80),
        "blank": encode(np.random.default_rng(5).integers(90, 200, (120, 120, 3), dtype=np.uint8)),  # no face
        "pending": altered(head, scale=0.8, quality=75, brightness=1.1),
        "other": altered(head, scale=0.95, quality=85, brightness=0.9),
    }


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def needles_of(app, pid: str, photos: dict[str, bytes], extra: dict[str, bytes] = {}) -> dict[str, bytes]:  # noqa: B006
    """What identifies a person in Redis: id, each photo's hash and a slice of its bytes, and
    of each stored photo its embedding's first bytes and a slice of its kept face crop (read
    now, before any delete)."""
    store = app.extensions["facerec"].store
    crops = store.crops(pid)
    needles = {"person id": pid.encode(), **extra}
    for name, data in photos.items():
        needles[f"hash of {name}"] = sha(data).encode()
        needles[f"bytes of {name}"] = data[len(data) // 2:len(data) // 2 + 64]
        embedding = store.redis.hget(store.emb_key(pid), sha(data))
        if embedding is not None:
            needles[f"embedding of {name}"] = embedding[:64]
        if sha(data) in crops:
            crop = crops[sha(data)]
            needles[f"crop of {name}"] = crop[len(crop) // 2:len(crop) // 2 + 64]
    return needles


def multipart_enroll(client, pid: str, files: list[tuple[bytes, str]]) -> str:
    response = client.post("/v1/enroll", data={"person_id": pid, "images": [(io.BytesIO(d), n) for d, n in files]},
                           content_type="multipart/form-data")
    assert response.status_code == 202, response.json
    return response.json["job_id"]


def change_ops(redis_db, pid: str) -> list[str]:
    return [f[b"op"].decode() for _, f in redis_db.xrange(CHANGES) if f[b"person"] == pid.encode()]


def test_deleting_a_person_leaves_nothing_of_them_in_redis(client, redis_server, redis_db, photos):
    pid = client.post("/v1/people", json={"name": "Ada Delete-Me", "person_id": "staff-7781"}).json["person_id"]
    assert client.post(f"/v1/people/{pid}/images", json={"image": b64(photos["sync"])}).status_code == 201
    done_job = multipart_enroll(client, pid, [(photos["bulk"], "ada-badge.jpg"), (photos["blank"], "ada-blank.jpg")])
    assert run_worker(redis_server.client())
    assert [r["status"] for r in client.get(f"/v1/jobs/{done_job}").json["results"]] == ["enrolled", "no_face"]
    bob = client.post("/v1/people", json={"name": "Bob Stays"}).json["person_id"]
    # A job still pending, with a new photo, a re-upload, and another person's photo.
    pending = client.post("/v1/enroll", json={"people": [
        {"person_id": pid, "images": [b64(photos["pending"]), b64(photos["sync"])]},
        {"person_id": bob, "images": [b64(photos["other"])]},
    ]}).json["job_id"]
    ada_photos = {k: photos[k] for k in ("sync", "bulk", "blank", "pending")}
    needles = needles_of(client.application, pid, ada_photos, {"name": b"Ada Delete-Me", "filename": b"ada-badge"})
    assert [n for n in needles if n.startswith(("embedding", "crop"))] == [
        "embedding of sync", "crop of sync", "embedding of bulk", "crop of bulk"]

    before = where_in_redis(redis_db, needles)
    processed = {"bytes of bulk", "bytes of blank"}  # uploads are dropped once a job has processed them
    assert {n for n, k in before.items() if not k} == processed  # the scan does find everything else
    assert any(k.startswith(b"fr:upload:") for k in before["bytes of pending"])
    assert not any(k.startswith(b"rq:") for keys in before.values() for k in keys), "RQ's keys name no one"

    assert client.delete(f"/v1/people/{pid}").json == {"deleted": True, "person_id": pid}
    after = where_in_redis(redis_db, needles)
    assert after.pop("person id") == {CHANGES}, "only the change stream (the tombstone) may name them"
    assert after == {n: set() for n in after}, {n: k for n, k in after.items() if k}
    assert change_ops(redis_db, pid) == ["create", "add_image", "add_image", "delete"]

    # The pending job runs: their items report person_deleted without naming them; Bob's is stored.
    assert run_worker(redis_server.client())
    view = client.get(f"/v1/jobs/{pending}").json
    assert view["status"] == "finished", view
    rows = [{k: v for k, v in r.items() if k != "message"} for r in view["results"]]
    assert rows[:2] == [{"index": 0, "status": "person_deleted"}, {"index": 1, "status": "person_deleted"}]
    assert rows[2]["status"] == "enrolled" and rows[2]["person_id"] == bob
    assert view["summary"] == {"person_deleted": 2, "enrolled": 1}
    finished = client.get(f"/v1/jobs/{done_job}").json["results"]
    assert [r["status"] for r in finished] == ["person_deleted", "person_deleted"]
    assert "person_id" not in finished[0] and "image_hash" not in finished[0]

    again = where_in_redis(redis_db, needles)
    assert again.pop("person id") == {CHANGES}
    assert again == {n: set() for n in again}, {n: k for n, k in again.items() if k}
    assert not redis_db.keys(f"fr:*{pid}*")
    assert client.get(f"/v1/people/{pid}").status_code == 404
    assert client.get(f"/v1/people/{bob}").json["image_count"] == 1


def test_deleting_one_photo_leaves_nothing_of_it_in_redis(client, redis_server, redis_db, photos):
    pid = client.post("/v1/people", json={"name": "Cleo"}).json["person_id"]
    assert client.post(f"/v1/people/{pid}/images", json={"image": b64(photos["sync"])}).status_code == 201
    first = multipart_enroll(client, pid, [(photos["bulk"], "cleo-bulk.jpg")])
    assert run_worker(redis_server.client())
    pending = multipart_enroll(client, pid, [(photos["bulk"], "cleo-bulk-again.jpg"), (photos["pending"], "p.jpg")])
    gone = sha(photos["bulk"])
    info = {i["image_hash"]: i for i in client.get(f"/v1/people/{pid}").json["images"]}
    assert set(info) == {sha(photos["sync"]), gone} and info[gone]["job_id"] == first
    needles = needles_of(client.application, pid, {"bulk": photos["bulk"]}, {"filename": b"cleo-bulk"})
    kept = {n: v for n, v in needles_of(client.application, pid, {"sync": photos["sync"]}).items()
            if n != "bytes of sync"}  # enrolled in the request: its bytes were never parked
    assert {"embedding of bulk", "crop of bulk"} <= set(needles) and {"embedding of sync", "crop of sync"} <= set(kept)
    assert all(where_in_redis(redis_db, needles).values())

    removed = client.delete(f"/v1/people/{pid}/images/{gone}")
    assert removed.status_code == 200 and removed.json["person"]["image_count"] == 1
    after = where_in_redis(redis_db, {n: v for n, v in needles.items() if n != "person id"})
    assert after == {n: set() for n in after}, {n: k for n, k in after.items() if k}
    still = where_in_redis(redis_db, kept)  # the person and their other photo are untouched
    assert all(still.values()), still
    parked = where_in_redis(redis_db, {"other photo": photos["pending"][1000:1064]})["other photo"]
    assert any(k.startswith(b"fr:upload:") for k in parked), "the pending job's other photo is still parked"
    remaining = client.application.extensions["facerec"].store.embeddings(pid)
    assert remaining.shape[0] == 1
    np.testing.assert_allclose(client.application.extensions["facerec"].cache.person_vector(pid), remaining[0], atol=1e-5)

    assert run_worker(redis_server.client())
    view = client.get(f"/v1/jobs/{pending}").json
    assert [(r["status"], r.get("person_id")) for r in view["results"]] == [("image_deleted", pid), ("enrolled", pid)]
    assert "image_hash" not in view["results"][0] and "filename" not in view["results"][0]
    assert [r["status"] for r in client.get(f"/v1/jobs/{first}").json["results"]] == ["image_deleted"]
    assert client.get(f"/v1/people/{pid}").json["image_count"] == 2
    again = where_in_redis(redis_db, {n: v for n, v in needles.items() if n != "person id"})
    assert again == {n: set() for n in again}, {n: k for n, k in again.items() if k}


def test_person_deleted_while_their_job_runs_stores_nothing(client, redis_server, redis_db, photos, monkeypatch):
    """The delete lands after the worker read the photo, before it stores the face: the job
    reports person_deleted, stores nothing and its row names no one."""
    from service import jobs

    pid = client.post("/v1/people", json={"name": "Dora"}).json["person_id"]
    job_id = multipart_enroll(client, pid, [(photos["pending"], "dora.jpg")])
    real_embed = jobs.embed_outcomes
    deleted = []

    def delete_then_embed(models, outcomes):
        if outcomes and not deleted:
            deleted.append(client.delete(f"/v1/people/{pid}").status_code)
        return real_embed(models, outcomes)

    monkeypatch.setattr(jobs, "embed_outcomes", delete_then_embed)
    assert run_worker(redis_server.client())
    assert deleted == [200]
    view = client.get(f"/v1/jobs/{job_id}").json
    assert view["status"] == "finished" and view["summary"] == {"person_deleted": 1}
    assert set(view["results"][0]) == {"index", "status", "message"}
    found = where_in_redis(redis_db, needles_of(client.application, pid, {"pending": photos["pending"]}, {"filename": b"dora"}))
    assert found.pop("person id") == {CHANGES}
    assert found == {n: set() for n in found}, found
    assert change_ops(redis_db, pid) == ["create", "delete"], "nothing was stored"


def test_photo_deleted_before_the_job_records_it(client, redis_server, redis_db, photos, monkeypatch):
    """The photo is stored by the job and deleted before the job writes its result row: the
    row is written as image_deleted, without the photo's hash."""
    from service.store import GalleryStore

    pid = client.post("/v1/people", json={"name": "Eve"}).json["person_id"]
    job_id = multipart_enroll(client, pid, [(photos["pending"], "eve.jpg")])
    real_append = GalleryStore.append_job_results

    def remove_then_append(self, job, results, ttl, **kw):
        for result in results:
            if result.get("status") == "enrolled":
                assert client.delete(f"/v1/people/{pid}/images/{result['image_hash']}").status_code == 200
        return real_append(self, job, results, ttl, **kw)

    monkeypatch.setattr(GalleryStore, "append_job_results", remove_then_append)
    assert run_worker(redis_server.client())
    view = client.get(f"/v1/jobs/{job_id}").json
    assert [(r["status"], r.get("person_id")) for r in view["results"]] == [("image_deleted", pid)]
    found = where_in_redis(redis_db, {"hash": sha(photos["pending"]).encode(), "filename": b"eve.jpg",
                                      "bytes": photos["pending"][1000:1064]})
    assert found == {"hash": set(), "filename": set(), "bytes": set()}, found
    assert client.get(f"/v1/people/{pid}").json["image_count"] == 0
