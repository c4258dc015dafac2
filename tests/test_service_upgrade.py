"""Model upgrades that keep the gallery: kept crops, re-embedding with a second tiny model while
enrollments and deletes go on, the switch, dropping the old version, and the refusals."""
from __future__ import annotations

import json
import threading

import pytest
from service_support import altered, b64, head_crop, run_worker

import upgrade
from service import versions
from service.config import load_config
from service.crops import decode_frame
from service.errors import UpgradeRefusedError
from service.models import ModelSet, load_recognizer
from service.store import GalleryStore


@pytest.fixture(scope="module")
def tiny_model_b(synthetic_celeba, tmp_path_factory):
    """A second tiny model (another seed: other weights, another version)."""
    from trainer.configs import get_config
    from trainer.fit import Trainer

    out = tmp_path_factory.mktemp("tiny_run_b")
    Trainer(synthetic_celeba, get_config("tiny", seed=1), out, cache_dir=None).fit()
    return out / "model.pt"


@pytest.fixture(scope="module")
def recognizer_b(tiny_model_b):
    return load_recognizer(tiny_model_b, load_config({"TORCH_THREADS": 1}, environ={}))


@pytest.fixture(scope="module")
def photos(astronaut) -> list[bytes]:
    """Different bytes of the same face: each is a distinct photo to the gallery."""
    head = head_crop(astronaut)
    return [altered(head, scale=s, quality=q, brightness=b)
            for s, q, b in [(1.0, 95, 1.0), (0.9, 85, 1.05), (0.95, 80, 0.95), (0.85, 90, 1.1),
                            (1.0, 75, 0.9), (0.9, 92, 1.0), (0.95, 88, 1.08)]]


def enroll(client, name: str, images: list[bytes]) -> str:
    pid = client.post("/v1/people", json={"name": name}).json["person_id"]
    for data in images:
        response = client.post(f"/v1/people/{pid}/images", json={"image": b64(data)})
        assert response.status_code == 201, response.json
    return pid


def hashes(redis_db, kind: str, pid: str) -> set[bytes]:
    return set(redis_db.hkeys(f"fr:{kind}:{pid}"))


def identify(client, data: bytes) -> tuple[str, str | None]:
    """(model that answered, person matched or None for unknown). Every test photo shows the
    same face, so which enrolled person matches is not asserted here (bench/model_upgrade.py
    counts wrong answers on real identities); that someone does, is."""
    body = client.post("/v1/identify", json={"image": b64(data), "k": 1}).json
    face = body["faces"][0]
    return body["model_version"], (face["person"] or {}).get("person_id")


def test_crops_are_kept_and_go_with_the_photo_or_person(service_app_factory, redis_server, redis_db, photos):
    client = service_app_factory().test_client()
    pid = enroll(client, "Eileen", photos[:2])
    crops = redis_db.hgetall(f"fr:crop:{pid}")
    assert set(crops) == hashes(redis_db, f"emb:{client.application.extensions['facerec'].recognizer.version}", pid)
    for data in crops.values():
        frame = decode_frame(data)
        assert frame is not None and frame.shape == (218, 178, 3)  # the canonical aligned frame
        assert 2_000 < len(data) < 20_000  # a few KB of JPEG
        assert frame[112, 70:110].std() > 0  # a face, not a blank

    # bulk enrollment through a worker keeps crops too
    job = client.post("/v1/enroll", json={"person_id": pid, "images": [b64(photos[2])]}).json
    assert run_worker(redis_server.client())
    assert redis_db.hlen(f"fr:crop:{pid}") == 3, client.get(f"/v1/jobs/{job['job_id']}").json

    first = sorted(crops)[0].decode()
    assert client.delete(f"/v1/people/{pid}/images/{first}").status_code == 200
    assert first.encode() not in hashes(redis_db, "crop", pid) and redis_db.hlen(f"fr:crop:{pid}") == 2
    assert client.delete(f"/v1/people/{pid}").status_code == 200
    assert redis_db.keys("fr:crop:*") == [] and redis_db.keys("fr:emb:*") == []


def test_upgrade_between_two_models_with_enrollments_and_deletes_in_flight(
        service_app_factory, service_recognizer, recognizer_b, tiny_model_b, redis_server, redis_db, photos,
        monkeypatch, capsys):
    a, b = service_recognizer.version, recognizer_b.version
    assert a != b
    old = service_app_factory().test_client()  # a server not yet restarted: model A only
    both = service_app_factory(MODELS=ModelSet(service_recognizer, recognizer_b)).test_client()
    people = {name: enroll(old, name, photos[i:i + 2]) for i, name in zip((0, 2, 4), ("p1", "p2", "p3"))}
    store = GalleryStore(redis_db, a, service_recognizer.dim)
    assert versions.read_state(store).to_dict() == {"serving": None,
                                                    "versions": {a: {"complete": True, "people_to_embed": 0}}}
    with pytest.raises(UpgradeRefusedError, match="no serving version"):
        versions.drop(store, a)

    # Register B by hand first to see the bookkeeping; the command resumes from here.
    assert versions.register(store, b, keep_face_crops=True) == 3
    health = both.get("/health").json["models"]
    assert health["versions"][b] == {"complete": False, "people_to_embed": 3} and health["answering"] == a
    with pytest.raises(UpgradeRefusedError, match="not complete: 3 person"):
        versions.switch(store, b)
    p4 = enroll(old, "p4", [photos[6]])  # enrolled by an A-only server: queued for B
    assert redis_db.sismember(f"fr:todo:{b}", p4)
    p5 = enroll(both, "p5", [photos[1]])  # enrolled by a server holding both: embedded by both at once
    assert not redis_db.sismember(f"fr:todo:{b}", p5) and redis_db.hlen(f"fr:emb:{b}:{p5}") == 1

    # The command runs while enrollments and deletes go on beside it.
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("TORCH_THREADS", "1")
    outcome: dict = {}
    command = threading.Thread(target=lambda: outcome.update(rc=upgrade.main(["run", "--model", str(tiny_model_b)])))
    command.start()
    p6 = enroll(old, "p6", [photos[3]])
    p1_photos = sorted(hashes(redis_db, "crop", people["p1"]))
    assert old.delete(f"/v1/people/{people['p1']}/images/{p1_photos[0].decode()}").status_code == 200
    assert old.delete(f"/v1/people/{people['p3']}").status_code == 200
    command.join(300)
    assert outcome.get("rc") == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["version"] == b and summary.get("switched") is True

    # Whatever the interleaving: every photo of every person has a B embedding, nothing deleted came back.
    living = {**{k: v for k, v in people.items() if k != "p3"}, "p4": p4, "p5": p5, "p6": p6}
    for pid in living.values():
        assert hashes(redis_db, f"emb:{b}", pid) == hashes(redis_db, f"emb:{a}", pid) == hashes(redis_db, "crop", pid)
    assert p1_photos[0] not in hashes(redis_db, f"emb:{b}", people["p1"])
    assert not redis_db.keys(f"fr:*:{people['p3']}") and not redis_db.keys(f"fr:*:*:{people['p3']}")
    state = versions.read_state(store)
    assert state.serving == b and state.complete(a) and state.complete(b)

    # Servers holding B answer with it at once; the old one keeps answering with A (still complete).
    for data in (photos[6], photos[3]):
        for client, version in ((both, b), (old, a)):
            answered, pid = identify(client, data)
            assert answered == version and pid in living.values()
    health = both.get("/health").json["models"]
    assert health["serving"] == b and health["answering"] == b and health["loaded"] == [a, b]

    # Restarted with B alone, then A dropped: B serves everyone, A's embeddings are gone.
    new = service_app_factory(RECOGNIZER=recognizer_b).test_client()
    with pytest.raises(UpgradeRefusedError, match="is the serving version"):
        versions.drop(store, b)
    assert versions.drop(store, a) == 2 * len(living)
    assert not redis_db.keys(f"fr:emb:{a}:*") and not redis_db.keys(f"fr:imginfo:{a}:*")
    for client in (new, both):
        answered, pid = identify(client, photos[6])
        assert answered == b and pid in living.values()
    assert versions.read_state(store).to_dict()["versions"] == {b: {"complete": True, "people_to_embed": 0}}
    assert new.get("/health").json["models"] == {"loaded": [b], "answering": b, "serving": b,
                                                 "versions": {b: {"complete": True, "people_to_embed": 0}}}


def test_upgrade_refused_when_crops_are_not_kept(service_app_factory, tiny_model_b, redis_server, redis_db,
                                                 photos, monkeypatch, capsys):
    client = service_app_factory(KEEP_FACE_CROPS="0").test_client()
    pid = enroll(client, "No crops", photos[:1])
    assert redis_db.keys("fr:crop:*") == [] and redis_db.hlen(f"fr:emb:{client.application.extensions['facerec'].recognizer.version}:{pid}") == 1
    before = {k: redis_db.dump(k) for k in redis_db.keys("fr:*") if not k.startswith(b"fr:metrics")}
    monkeypatch.setenv("REDIS_URL", redis_server.url)

    monkeypatch.setenv("KEEP_FACE_CROPS", "0")
    assert upgrade.main(["run", "--model", str(tiny_model_b)]) == 2
    err = capsys.readouterr().err
    assert "face crops are not kept (KEEP_FACE_CROPS=0)" in err and "enrolled again" in err

    monkeypatch.setenv("KEEP_FACE_CROPS", "1")  # the command's setting differs: the data still says no
    assert upgrade.main(["run", "--model", str(tiny_model_b)]) == 2
    err = capsys.readouterr().err
    assert "1 photo(s) of 1 person(s) have no kept face crop" in err and pid in err
    after = {k: redis_db.dump(k) for k in redis_db.keys("fr:*") if not k.startswith(b"fr:metrics")}
    assert after == before  # nothing registered, nothing queued
