"""STRANGER_RATE through the HTTP API, with the shipped model and its stranger curve on a real
photo and a real Redis: identify's default threshold rises as the gallery grows, so a face that
matched among 1 person is "unknown" among 61; a request's own threshold, verify and a server
without the setting are untouched; /health and /metrics say what a stranger meets; a setting that
cannot be kept stops the start.

Eileen is enrolled as a vector at cosine 0.52 from the astronaut's face: above the model's 0.445,
below what 1 stranger in 100 allows among 61 people (about 0.6 with the shipped curve)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from service_support import b64, encode, gallery_snapshot, head_crop, unit_vector

from service.errors import ConfigError
from service.store import GalleryStore

COSINE = 0.52


@pytest.fixture
def make_client(shipped, redis_server, redis_db):
    from recognizer.artifact import SHIPPED_MODEL
    from service.app import create_app

    def make(recognizer=shipped, **overrides):
        app = create_app({"REDIS_URL": redis_server.url, "MODEL_PATH": str(SHIPPED_MODEL), "RECOGNIZER": recognizer,
                          "TESTING": True, "RATE_LIMIT": "off", **overrides})
        return app.test_client()

    return make


def at_cosine(face: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """A unit vector at exactly ``cosine`` from the unit vector ``face``."""
    other = unit_vector(seed, len(face))
    other = other - (other @ face) * face
    other /= np.linalg.norm(other)
    return (cosine * face + np.sqrt(1 - cosine ** 2) * other).astype(np.float32)


def test_the_default_threshold_follows_the_gallery_size(make_client, shipped, redis_db, astronaut):
    curve = shipped.strangers
    assert curve is not None and curve.model_version == shipped.version  # the shipped model carries its curve
    client = make_client(STRANGER_RATE="0.01")
    photo = encode(head_crop(astronaut), quality=95)
    face = shipped.analyze(photo)[0].embedding
    store = GalleryStore(redis_db, shipped.version, shipped.dim)
    eileen = store.create_person("Eileen").person_id
    store.add_image(eileen, "e" * 64, at_cosine(face, COSINE, 1), {})

    alone = client.post("/v1/identify", json={"image": b64(photo)}).json
    assert alone["threshold_source"] == "stranger_rate" and alone["stranger_rate"] == {
        "target": 0.01, "people": 1, "within_curve": True}
    assert alone["threshold"] == shipped.threshold  # one person: the rule never goes below the model's
    assert alone["faces"][0]["decision"] == "match" and alone["faces"][0]["matches"][0]["cosine"] == pytest.approx(
        COSINE, abs=1e-4)

    for i in range(60):
        other = store.create_person(f"made-up {i}").person_id
        store.add_image(other, f"{i:064x}", unit_vector(100 + i, shipped.dim), {})
    crowd = client.post("/v1/identify", json={"image": b64(photo)}).json
    assert crowd["stranger_rate"]["people"] == 61
    assert crowd["threshold"] == pytest.approx(curve.threshold_for(0.01, 61))
    assert crowd["threshold"] > COSINE > shipped.threshold
    assert crowd["faces"][0]["decision"] == "unknown" and crowd["faces"][0]["person"] is None
    assert crowd["faces"][0]["matches"][0]["person_id"] == eileen  # still the best match, just not enough

    own = client.post("/v1/identify", json={"image": b64(photo), "threshold": 0.5}).json
    assert own["threshold_source"] == "request" and "stranger_rate" not in own
    assert own["faces"][0]["decision"] == "match"
    verify = client.post("/v1/verify", json={"image": b64(photo), "person_id": eileen}).json
    assert verify["threshold_source"] == "model" and verify["same"] is True  # one claimed person: 1:1

    health = client.get("/health").json["strangers"]
    assert health["people"] == 61 and health["within_curve"] is True
    assert health["default_threshold"] == pytest.approx(crowd["threshold"], abs=1e-6)
    assert health["expected_stranger_rate"] == pytest.approx(0.01, rel=0.05)
    assert health["expected_at_model_threshold"] == pytest.approx(curve.stranger_rate(shipped.threshold, 61), abs=1e-6)
    assert health["expected_at_model_threshold"] > 0.05  # what the setting saves a 61-person gallery from
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "facerec_expected_stranger_rate 0.01" in metrics

    plain = make_client().post("/v1/identify", json={"image": b64(photo)}).json  # the setting off
    assert plain["threshold_source"] == "model" and plain["threshold"] == shipped.threshold
    assert plain["faces"][0]["decision"] == "match" and "stranger_rate" not in plain
    assert "within_curve" not in make_client().get("/health").json["strangers"]  # no rule, nothing to be within


def test_a_setting_that_cannot_be_kept_stops_the_start(make_client, shipped, redis_db):
    before = gallery_snapshot(redis_db)
    without_curve = copy.copy(shipped)
    without_curve.strangers = None
    with pytest.raises(ConfigError, match="has no stranger curve beside it"):
        make_client(without_curve, STRANGER_RATE="0.01")
    for bad in ("1", "-0.1", "nan", "lots"):
        with pytest.raises(ConfigError, match="STRANGER_RATE"):
            make_client(STRANGER_RATE=bad)
    assert gallery_snapshot(redis_db) == before  # a refused start wrote nothing
    assert make_client(without_curve).get("/health").json["strangers"] == {"curve": False, "stranger_rate": 0.0}
