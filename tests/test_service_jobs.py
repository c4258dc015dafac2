"""The enrollment job's rarer paths, through real RQ workers on the test Redis: a retry after
the job's own write, an attempt racing its twin, an upload that expired, and a worker that
runs another model (the job fails at once and the failed-job view says why)."""
from __future__ import annotations

import io
import time

import pytest
import redis as redis_lib
from rq.job import Job

from service.jobs import JOB_SERIALIZER
from service_support import altered, b64, encode, head_crop, run_worker


@pytest.fixture(scope="module")
def face_jpeg(astronaut) -> bytes:
    return encode(head_crop(astronaut), quality=93)


def retry_at_once(redis_db, job_id: str) -> None:
    """No scheduler runs in a burst test: make RQ requeue a failed attempt immediately."""
    job = Job.fetch(job_id, connection=redis_db, serializer=JOB_SERIALIZER)
    job.retry_intervals = [0]
    job.save()


def test_retry_after_its_own_write_reports_enrolled(service_app_factory, redis_server, redis_db, face_jpeg,
                                                    monkeypatch):
    """The first attempt stores the face, then loses Redis before recording the result: the
    retry finds the photo stored by this very job item and says "enrolled", not "duplicate".
    The same photo sent again by another job is a duplicate."""
    from service.store import GalleryStore

    client = service_app_factory(ENROLL_EMBED_BATCH=1).test_client()
    job_id = client.post("/v1/enroll", json={"name": "Retried", "images": [b64(face_jpeg)]}).json["job_id"]
    retry_at_once(redis_db, job_id)
    real_append = GalleryStore.append_job_results
    calls = []

    def outage_once(self, job, results, ttl, **kw):
        calls.extend(r["status"] for r in results)
        if len(calls) == 1:
            raise redis_lib.ConnectionError("simulated outage after the face was stored")
        return real_append(self, job, results, ttl, **kw)

    monkeypatch.setattr(GalleryStore, "append_job_results", outage_once)
    run_worker(redis_server.client())
    view = client.get(f"/v1/jobs/{job_id}").json
    assert calls == ["enrolled", "enrolled"], calls  # the first write happened; the retry saw it was its own
    assert view["status"] == "finished" and view["retries_left"] == 2, view
    assert [r["status"] for r in view["results"]] == ["enrolled"]
    pid = view["results"][0]["person_id"]
    person = client.get(f"/v1/people/{pid}").json
    assert person["image_count"] == 1 and person["images"][0]["job_id"] == job_id

    monkeypatch.setattr(GalleryStore, "append_job_results", real_append)
    again = client.post("/v1/enroll", json={"person_id": pid, "images": [b64(face_jpeg)]}).json["job_id"]
    assert run_worker(redis_server.client())
    assert [r["status"] for r in client.get(f"/v1/jobs/{again}").json["results"]] == ["duplicate"]


def test_twin_attempt_storing_first_is_still_enrolled(service_app_factory, redis_server, face_jpeg, astronaut,
                                                      monkeypatch):
    """Two attempts of one job run at once (a worker presumed dead whose job was requeued):
    the twin stores the face between this attempt's check and its write. The write then finds
    the photo stored by the same job item and reports "enrolled" (store_image's own-write
    branch); a photo stored by someone else in that window is a duplicate."""
    from rq import get_current_job

    from service import jobs

    client = service_app_factory(ENROLL_EMBED_BATCH=1).test_client()
    own = client.post("/v1/enroll", json={"name": "Twin", "images": [b64(face_jpeg)]}).json
    pid = own["people"][0]["person_id"]
    other = altered(head_crop(astronaut), scale=0.9)
    foreign = client.post("/v1/enroll", json={"person_id": pid, "images": [b64(other)]}).json["job_id"]
    real_embed = jobs.embed_outcomes
    twins = []

    def twin_stores_first(models, outcomes):
        vectors = real_embed(models, outcomes)
        job = get_current_job()
        for outcome, embeddings in zip(outcomes, vectors):  # the twin: this job's item 0, or another job
            writer = job.id if job.id == own["job_id"] else "someone-else"
            store = jobs.GalleryStore(job.connection, models.primary.version, models.primary.dim)
            twins.append(jobs.store_image(store, pid, {"person_id": pid}, outcome, job_id=writer, job_item=0,
                                          embeddings=embeddings)["status"])
        return vectors

    monkeypatch.setattr(jobs, "embed_outcomes", twin_stores_first)
    assert run_worker(redis_server.client())
    assert twins == ["enrolled", "enrolled"]
    assert [r["status"] for r in client.get(f"/v1/jobs/{own['job_id']}").json["results"]] == ["enrolled"]
    assert [r["status"] for r in client.get(f"/v1/jobs/{foreign}").json["results"]] == ["duplicate"]
    assert client.get(f"/v1/people/{pid}").json["image_count"] == 2


def test_an_upload_that_expired_is_reported_and_nothing_is_stored(service_app_factory, redis_server, redis_db,
                                                                 face_jpeg):
    client = service_app_factory(UPLOAD_TTL=1).test_client()
    response = client.post("/v1/enroll", data={"name": "Late", "images": [(io.BytesIO(face_jpeg), "late.jpg")]},
                           content_type="multipart/form-data").json
    upload = Job.fetch(response["job_id"], connection=redis_db, serializer=JOB_SERIALIZER).kwargs["spec"]["items"][0]["upload"]
    assert redis_db.exists(upload)
    deadline = time.monotonic() + 10
    while redis_db.exists(upload) and time.monotonic() < deadline:  # Redis's own expiry, not a DEL
        time.sleep(0.1)
    assert not redis_db.exists(upload)
    assert run_worker(redis_server.client())
    view = client.get(f"/v1/jobs/{response['job_id']}").json
    pid = response["people"][0]["person_id"]
    assert view["status"] == "finished" and view["summary"] == {"expired": 1}
    row = view["results"][0]
    assert (row["status"], row["person_id"], row["filename"]) == ("expired", pid, "late.jpg")
    assert "expired" in row["message"]
    assert client.get(f"/v1/people/{pid}").json["image_count"] == 0


def test_a_worker_with_another_model_fails_the_job_at_once(service_app_factory, service_recognizer, tiny_model,
                                                          redis_server, redis_db, face_jpeg, tmp_path):
    """The model-mismatch path: the gallery keeps a model this worker lacks, so the job fails
    with no retry (it cannot help), stores nothing, leaves the upload for a worker with the
    right model, and GET /jobs/<id> shows the failure's last line."""
    from recognizer.artifact import ModelArtifact
    from service import jobs
    from service.config import load_config

    other = ModelArtifact.load(tiny_model)
    other.training = {**other.training, "note": "a different model"}
    other_version = other.save(tmp_path / "other.pt")
    assert other_version != service_recognizer.version
    other_recognizer = jobs.build_recognizer(load_config({"MODEL_PATH": str(tmp_path / "other.pt")}, environ={}))

    client = service_app_factory().test_client()
    first = client.post("/v1/people", json={"name": "Kept"}).json["person_id"]  # the gallery now keeps the model
    assert client.post(f"/v1/people/{first}/images", json={"image": b64(face_jpeg)}).status_code == 201
    response = client.post("/v1/enroll", json={"name": "Mismatch", "images": [b64(face_jpeg)]}).json
    assert Job.fetch(response["job_id"], connection=redis_db, serializer=JOB_SERIALIZER).retries_left == 3
    jobs.set_recognizer(other_recognizer)
    assert run_worker(redis_server.client())
    view = client.get(f"/v1/jobs/{response['job_id']}").json
    assert view["status"] == "failed", view
    assert view["retries_left"] == 0
    assert "ModelVersionError" in view["error"]
    assert other_version in view["error"] and service_recognizer.version in view["error"]
    assert "Traceback" not in view["error"] and "\n" not in view["error"]
    assert view["results"] == [] and view["summary"] == {} and view["progress"] == {"done": 0, "total": 1}
    assert view["ended_at"] is not None
    assert client.get(f"/v1/people/{response['people'][0]['person_id']}").json["image_count"] == 0
    assert len(redis_db.keys("fr:upload:*")) == 1
    assert redis_db.keys("fr:emb:*") == [f"fr:emb:{service_recognizer.version}:{first}".encode()]
    assert redis_db.smembers("fr:model_versions") == {service_recognizer.version.encode()}
