"""Configuration, the change-following cache and the shipped deployment files; no model needed."""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from recognizer.artifact import SHIPPED_MODEL, default_model_path
from recognizer.errors import ConflictError, InvalidRequestError, ModelArtifactError
from service.cache import GalleryCache
from service.config import ServiceConfig, load_config
from service.errors import ConfigError, ModelVersionError, PersonNotFoundError
from service.store import GalleryStore

from service_support import unit_vector

ROOT = Path(__file__).resolve().parent.parent
DIM = 8


def unit(seed: int) -> np.ndarray:
    return unit_vector(seed, DIM)


@pytest.fixture
def store(redis_db) -> GalleryStore:
    return GalleryStore(redis_db, "model-a", DIM)


def test_config_from_env_and_overrides():
    cfg = load_config({"MAX_K": "50", "ADMIN_API_KEY": "a1"},
                      environ={"READ_API_KEYS": " r1, r2 ,", "DEFAULT_K": "3", "JOB_RETRY_INTERVALS": "1,2",
                               "UNRELATED": "x", "redis_url": "ignored: not upper-case"})
    assert cfg.max_k == 50 and cfg.default_k == 3 and cfg.job_retry_intervals == (1, 2)
    assert cfg.admin_api_keys == ("a1",) and cfg.read_api_keys == ("r1", "r2") and not cfg.open_mode
    assert cfg.redis_url == ServiceConfig.redis_url
    assert load_config({"TESTING": True}, environ={}).extra == {"TESTING": True}
    assert load_config(environ={}).detect_max_side == 1600 and load_config({"DETECT_MAX_SIDE": "0"}, environ={}).detect_max_side == 0
    for bad in ({"MAX_K": "lots"}, {"DEFAULT_K": 0}, {"DEFAULT_K": 9, "MAX_K": 5}, {"MIN_DETECTION_PROBABILITY": 2},
                {"REDIS_KEY_PREFIX": "a:b"}, {"ADMIN_API_KEYS": "k", "READ_API_KEYS": "k"}, {"MAX_K": 2.5},
                {"DETECT_MAX_SIDE": -1}, {"DETECT_MAX_SIDE": 50}, {"ENROLL_EMBED_BATCH": 0}):
        with pytest.raises(ConfigError):
            load_config(bad, environ={})


def test_model_path_default_is_the_shipped_model_and_a_missing_one_says_how(tmp_path):
    assert load_config({}, environ={}).resolved_model_path() == SHIPPED_MODEL  # never a runs/ epoch by chance
    assert default_model_path({}) == SHIPPED_MODEL
    assert default_model_path({"MODEL_PATH": "runs/x/model.pt"}) == Path("runs/x/model.pt")
    with pytest.raises(ModelArtifactError, match="MODEL_PATH=runs/NAME/model.pt"):
        load_config({"MODEL_PATH": str(tmp_path / "missing.pt")}, environ={}).resolved_model_path()

    from service.app import create_app

    with pytest.raises(ModelArtifactError, match="python -m trainer fit"):
        create_app({"MODEL_PATH": str(tmp_path / "missing.pt")})


def test_store_people_and_images(store):
    a = store.create_person("  Ada  ", {"team": "x"})
    assert a.name == "Ada" and len(a.person_id) == 32
    with pytest.raises(ConflictError):
        store.create_person("Other", person_id=a.person_id)
    with pytest.raises(InvalidRequestError):
        store.create_person("Bad", {"n": float("nan")})
    assert store.add_image(a.person_id, "a" * 64, unit(1), {"job_id": "j1"}) == ("enrolled", {"job_id": "j1"})
    assert store.add_image(a.person_id, "a" * 64, unit(2), {"job_id": "j2"}) == ("duplicate", {"job_id": "j1"})
    np.testing.assert_array_equal(store.embeddings(a.person_id), unit(1)[None])
    other_model = GalleryStore(store.redis, "model-b", DIM)
    assert other_model.get_person(a.person_id).image_count == 0  # never mixed across models
    assert other_model.embeddings(a.person_id).shape == (0, DIM)
    with pytest.raises(ModelVersionError, match="gallery keeps model"):  # a model the gallery does not keep
        other_model.add_image(a.person_id, "b" * 64, unit(3), {})
    store.redis.sadd("fr:model_versions", "model-b")  # registered (upgrade.py does it): written, then deleted
    other_model.add_image(a.person_id, "b" * 64, unit(3), {})
    assert other_model.get_person(a.person_id).image_count == 1
    assert store.redis.smembers("fr:todo:model-a") == {a.person_id.encode()}  # model-a still lacks that photo
    store.delete_person(a.person_id)
    assert store.redis.keys("fr:emb:*") == [] and store.redis.keys("fr:imginfo:*") == []
    assert store.redis.keys("fr:todo:*") == []
    with pytest.raises(PersonNotFoundError):
        store.add_image(a.person_id, "c" * 64, unit(4), {})


def test_cache_follows_changes_and_rebuilds_when_it_must(store, redis_db):
    cache = GalleryCache(store)
    cache.sync()
    assert len(cache) == 0 and cache.rebuilds == 1
    a = store.create_person("A").person_id
    b = store.create_person("B").person_id
    store.add_image(a, "1" * 64, unit(1), {})
    store.add_image(a, "2" * 64, unit(2), {})
    store.add_image(b, "3" * 64, unit(3), {})
    cache.sync()
    assert len(cache) == 2 and cache.rebuilds == 1  # followed the stream, no rebuild
    expected = (unit(1) + unit(2)) / np.linalg.norm(unit(1) + unit(2))
    np.testing.assert_allclose(cache.person_vector(a), expected, atol=1e-6)
    assert cache.search(unit(3), k=1)[0][0].person_id == b

    store.remove_image(a, "2" * 64)
    store.delete_person(b)
    cache.sync()
    np.testing.assert_allclose(cache.person_vector(a), unit(1), atol=1e-6)
    assert cache.person_vector(b) is None and len(cache) == 1 and cache.rebuilds == 1

    # Entries trimmed before this process read them: the gap is detected, a rebuild repairs it.
    redis_db.xtrim("fr:changes", maxlen=0, approximate=False)
    c = store.create_person("C").person_id
    store.add_image(c, "4" * 64, unit(4), {})
    redis_db.xtrim("fr:changes", maxlen=1, approximate=False)
    cache.sync()
    assert cache.rebuilds == 2 and cache.search(unit(4), k=1)[0][0].person_id == c

    # The data set replaced (flushed, then rewritten): another epoch, rebuilt from scratch.
    redis_db.flushdb()
    d = store.create_person("D").person_id
    store.add_image(d, "5" * 64, unit(5), {})
    cache.sync()
    assert cache.rebuilds == 3 and len(cache) == 1 and cache.person_vector(a) is None


def test_requirements_pin_the_installed_versions():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.lower()] = version
    assert "torch" not in pins and "facenet-pytorch" not in pins
    assert {"flask", "gunicorn", "redis", "rq", "faiss-cpu", "numpy", "pillow", "opencv-python-headless", "tqdm",
            "matplotlib", "scikit-image", "pytest", "requests"} <= set(pins)
    for name, version in pins.items():
        assert metadata.version(name) == version, name


def test_redis_conf_persists():
    conf = {}
    for line in (ROOT / "deploy" / "redis.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            conf[key] = value.strip()
    assert conf["appendonly"] == "yes" and conf["appendfsync"] in ("everysec", "always")
    assert conf["maxmemory-policy"] == "noeviction"
    # Loopback only, protected (issue 12): a writable Redis is code execution for RQ users.
    assert set(conf["bind"].split()) <= {"127.0.0.1", "-::1", "::1"} and conf["protected-mode"] == "yes"
    assert "requirepass" not in conf, "the password comes from the environment, not from a file in git"
