"""AS-norm through the HTTP API, with the shipped model on real photos and a real Redis: the
score the API returns is the rule applied to the gallery's cohort, the decision follows that
score (not the cosine) when a request asks for it, and every way of not getting it says why.

The cohort here is 6 made-up people and a calibration made up for the test. The made-up people
point away from both faces (cosine about -0.56 with each), so a stranger's cosine of 0.002 is
far above everything in the cohort: the score calls the cameraman Eileen while the cosine does
not, and that disagreement shows which one decided."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from service_support import b64, encode, gallery_snapshot, head_crop, unit_vector

from index import mean_embedding
from index.cohort import pick_cohort
from recognizer.score_norm import Calibration
from service.store import GalleryStore

COHORT, K, SCORE_THRESHOLD = 6, 2, 12.0


@pytest.fixture(scope="module")
def cameraman() -> bytes:
    from skimage import data

    gray = data.camera()
    return encode(np.stack([gray] * 3, axis=-1), quality=95)


@pytest.fixture
def make_client(shipped, redis_server, redis_db):
    from recognizer.artifact import SHIPPED_MODEL
    from service.app import create_app

    calibrated = copy.copy(shipped)
    calibrated.score_norm = Calibration(shipped.version, COHORT, K, SCORE_THRESHOLD, 1e-3, "made up for the test")

    def make(**overrides):
        app = create_app({"REDIS_URL": redis_server.url, "MODEL_PATH": str(SHIPPED_MODEL), "RECOGNIZER": calibrated,
                          "TESTING": True, "RATE_LIMIT": "off", **overrides})
        return app.test_client()

    return make


def _reference_score(probe: np.ndarray, person: str, store: GalleryStore) -> float:
    """The rule written out: both sides' top-K cosines against the cohort without ``person``."""
    cohort_ids = [p for p in pick_cohort(store.all_person_ids(), COHORT)]
    vectors = np.stack([mean_embedding(store.embeddings(p)) for p in cohort_ids if p != person])
    target = mean_embedding(store.embeddings(person))
    cos = float(probe @ target)
    halves = []
    for face in (probe, target):
        top = np.sort(vectors @ face)[::-1][:K]
        halves.append((cos - top.mean()) / top.std())
    return 0.5 * sum(halves)


def test_identify_and_verify_decide_on_the_score_once_the_cohort_is_there(make_client, shipped, redis_db,
                                                                           astronaut, cameraman):
    client = make_client()
    eileen = encode(head_crop(astronaut), quality=95)
    pid = client.post("/v1/people", json={"name": "Eileen"}).json["person_id"]
    assert client.post(f"/v1/people/{pid}/images", json={"image": b64(eileen)}).status_code == 201
    store = GalleryStore(redis_db, shipped.version, shipped.dim)

    # Too few people for a cohort: the cosine decides, and the answer says why
    few = client.post("/v1/identify", json={"image": b64(cameraman), "score_norm": "on"}).json
    assert few["rule"] == "cosine" and "the cohort needs 6" in few["score_norm_unused"], few
    assert "score" not in few["faces"][0]["matches"][0]

    probe = shipped.analyze(cameraman)[0].embedding
    away = probe + mean_embedding(store.embeddings(pid))
    away /= np.linalg.norm(away)
    for i in range(COHORT):
        other = store.create_person(f"made-up {i}").person_id
        store.add_image(other, f"{i:064x}", -0.8 * away + 0.6 * unit_vector(i, shipped.dim), {})
    found = client.post("/v1/identify", json={"image": b64(cameraman), "score_norm": "on"}).json
    assert found["rule"] == "as_norm" and found["score_threshold"] == SCORE_THRESHOLD, found
    face = found["faces"][0]
    best = face["matches"][0]
    assert best["person_id"] == pid and best["cosine"] < shipped.threshold  # the cosine says "unknown"
    assert best["score"] == pytest.approx(_reference_score(probe, pid, store), rel=1e-3)
    assert best["score"] >= SCORE_THRESHOLD and face["decision"] == "match", face  # the score decided
    assert all("score" in m for m in face["matches"])
    health = client.get("/health").json["score_norm"]
    assert health == {"server": "opt_in", "calibrated": True, "active": True, "cohort_size": COHORT, "people": 7,
                      "k": K, "threshold": SCORE_THRESHOLD}

    # the same photo without score_norm: the cosine, as before
    plain = client.post("/v1/identify", json={"image": b64(cameraman)}).json
    assert plain["rule"] == "cosine" and plain["faces"][0]["decision"] == "unknown"
    assert "score_norm_unused" not in plain and "score" not in plain["faces"][0]["matches"][0]

    against = client.post("/v1/verify", json={"image": b64(cameraman), "person_id": pid, "score_norm": "on"}).json
    assert against["rule"] == "as_norm" and against["same"] is True
    assert against["score"] == pytest.approx(best["score"], rel=1e-3)
    assert client.post("/v1/verify", json={"image": b64(cameraman), "person_id": pid}).json["same"] is False


def test_bad_or_impossible_requests_for_the_score(make_client, redis_db, astronaut):
    client = make_client()
    photo = b64(encode(head_crop(astronaut), quality=95))
    before = gallery_snapshot(redis_db)
    for body, field in (({"score_norm": "yes"}, "score_norm"), ({"score_norm": 1}, "score_norm"),
                        ({"score_norm": "on", "threshold": 0.5}, "threshold")):
        for route in ("/v1/identify", "/v1/verify"):
            r = client.post(route, json={"image": photo, "image2": photo, **body})
            assert r.status_code == 400 and r.json["details"]["field"] == field, (route, body, r.json)
    assert gallery_snapshot(redis_db) == before

    off = make_client(SCORE_NORM="off").post("/v1/verify", json={"image": photo, "image2": photo,
                                                                  "score_norm": "on"}).json
    assert off["rule"] == "cosine" and "SCORE_NORM=off" in off["score_norm_unused"]
    # the server's default on: a request's own cosine threshold still wins, without an error
    default_on = make_client(SCORE_NORM="default")
    r = default_on.post("/v1/verify", json={"image": photo, "image2": photo, "threshold": 0.5}).json
    assert r["rule"] == "cosine" and r["threshold_source"] == "request" and "score_norm_unused" not in r
    r = default_on.post("/v1/verify", json={"image": photo, "image2": photo}).json
    assert r["rule"] == "cosine" and "the cohort needs 6" in r["score_norm_unused"]
