"""The host gallery snapshot in the service: same answers as the Redis-built cache, changes
after the snapshot replayed, and Redis read instead whenever the snapshot cannot be followed."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from recognizer.errors import GalleryError
from service import snapshot
from service.cache import GalleryCache
from service.store import GalleryStore

from service_support import unit_vector

DIM = 32


unit = partial(unit_vector, dim=DIM)


@pytest.fixture
def store(redis_db) -> GalleryStore:
    """A gallery of a made-up model version, 32-d: enough to train the snapshot's lists."""
    return GalleryStore(redis_db, "model-a", DIM)


def _gallery(store: GalleryStore, people: int = 400) -> list[str]:
    pids = []
    for i in range(people):
        pid = store.create_person(f"person {i}").person_id
        store.add_image(pid, f"{2 * i:064x}", unit(2 * i), {})
        if i % 3 == 0:
            store.add_image(pid, f"{2 * i + 1:064x}", unit(2 * i + 1), {})
        pids.append(pid)
    return pids


def _answers(cache: GalleryCache, queries: np.ndarray, k: int = 3) -> list[list[tuple[str, str]]]:
    return [[(m.person_id, m.name) for m in row] for row in cache.search(queries, k=k)]


def test_a_snapshot_answers_as_redis_does_and_replays_what_changed_since(store, tmp_path):
    pids = _gallery(store)
    meta = snapshot.write(store, tmp_path)
    assert meta["count"] == 400 and meta["index"]["count"] == 400

    # Changes after the snapshot: a new person, a changed one, a deleted one, a renamed one.
    new = store.create_person("newcomer").person_id
    store.add_image(new, "f" * 64, unit(10_000), {})
    store.add_image(pids[1], "e" * 64, unit(10_001), {})
    store.delete_person(pids[2])

    mapped = GalleryCache(store, str(tmp_path))
    mapped.rebuild()
    tuned = GalleryCache(store, str(tmp_path), snapshot_nprobe=3)  # GALLERY_SNAPSHOT_NPROBE
    tuned.rebuild()
    assert tuned._index.nprobe == 3 and mapped._index.nprobe == meta["index"]["nlist"]  # noqa: SLF001
    exact = GalleryCache(store)
    exact.rebuild()
    assert mapped.source == "snapshot" and exact.source == "redis"
    assert len(mapped) == len(exact) == 400

    queries = np.stack([unit(s) for s in range(0, 800, 7)] + [unit(10_000), unit(10_001)])
    noisy = queries + 0.05 * np.random.default_rng(1).standard_normal(queries.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    got, want = _answers(mapped, noisy, k=1), _answers(exact, noisy, k=1)
    assert sum(g == w for g, w in zip(got, want)) >= 0.97 * len(want)  # IVF-SQ8 + float16 re-rank
    assert got[-2] == [(new, "newcomer")]
    np.testing.assert_allclose(mapped.person_vector(pids[1]), exact.person_vector(pids[1]), atol=1e-6)
    np.testing.assert_allclose(mapped.person_vector(pids[5]), exact.person_vector(pids[5]), atol=2e-3)
    assert mapped.person_vector(pids[2]) is None
    assert all(pids[2] not in [p for p, _ in row] for row in _answers(mapped, np.stack([unit(4)]), k=5))

    # After start-up it follows the stream like any cache.
    store.delete_person(pids[0])
    late = store.create_person("late").person_id
    store.add_image(late, "d" * 64, unit(20_000), {})
    mapped.sync()
    assert mapped.person_vector(pids[0]) is None
    assert _answers(mapped, unit(20_000)[None], k=1) == [[(late, "late")]]
    assert len(mapped) == 400 and mapped.rebuilds == 1


def test_redis_is_read_when_the_snapshot_cannot_be_followed(store, redis_db, tmp_path):
    pids = _gallery(store, 120)
    snapshot.write(store, tmp_path)
    c = store.create_person("after").person_id
    store.add_image(c, "c" * 64, unit(30_000), {})
    redis_db.xtrim("fr:changes", maxlen=0, approximate=False)  # the stream no longer reaches back
    cache = GalleryCache(store, str(tmp_path))
    cache.rebuild()
    assert cache.source == "redis" and len(cache) == 121
    assert _answers(cache, unit(30_000)[None], k=1) == [[(c, "after")]]

    # Another data set (flushed and refilled): the snapshot's epoch no longer matches.
    redis_db.flushdb()
    other = GalleryStore(redis_db, "model-a", DIM)
    fresh = other.create_person("only one").person_id
    other.add_image(fresh, "b" * 64, unit(1), {})
    cache = GalleryCache(other, str(tmp_path))
    cache.rebuild()
    assert cache.source == "redis" and len(cache) == 1
    assert pids[0] not in [m.person_id for m in cache.search(unit(0), k=1)[0]]


def test_no_snapshot_or_a_broken_one_means_redis(store, tmp_path):
    _gallery(store, 60)
    cache = GalleryCache(store, str(tmp_path / "nothing-here"))
    cache.rebuild()
    assert cache.source == "redis" and len(cache) == 60
    snapshot.write(store, tmp_path)
    build = (tmp_path / "model-a" / "CURRENT").read_text()
    (tmp_path / "model-a" / build / "pids.npy").write_bytes(b"not an array")
    cache = GalleryCache(store, str(tmp_path))
    cache.rebuild()
    assert cache.source == "redis" and len(cache) == 60


def test_builds_are_switched_atomically_and_old_ones_pruned(store, tmp_path):
    _gallery(store, 60)
    first = snapshot.write(store, tmp_path)
    second = snapshot.write(store, tmp_path)
    third = snapshot.write(store, tmp_path)
    builds = sorted(p.name for p in (tmp_path / "model-a").iterdir() if p.is_dir())
    assert len(builds) == snapshot.KEEP_BUILDS and first["path"].rsplit("/", 1)[1] not in builds
    assert (tmp_path / "model-a" / "CURRENT").read_text() == third["path"].rsplit("/", 1)[1]
    assert json.loads((tmp_path / "model-a" / builds[0] / "gallery.json").read_text())["count"] == 60
    assert second["gen"] == third["gen"]
    # the build's scratch map of float32 mean vectors (2 KB a person) is gone once it is done
    assert sorted(p.name for p in Path(third["path"]).iterdir()) == [
        "gallery.json", "ids.npy", "ivf.faiss", "meta.json", "pids.npy", "vectors.npy"]


def test_a_gallery_without_vectors_leaves_no_build_behind(store, tmp_path):
    store.create_person("no photo yet")
    with pytest.raises(GalleryError, match="no person has a vector"):
        snapshot.write(store, tmp_path)
    assert list((tmp_path / "model-a").iterdir()) == []  # no half build, no scratch file, no CURRENT


def test_the_command_snapshots_every_served_model(service_recognizer, tiny_model, redis_server, redis_db,
                                                  tmp_path, monkeypatch, capsys):
    store = GalleryStore(redis_db, service_recognizer.version, service_recognizer.dim)
    rng = np.random.default_rng(0)
    for i in range(50):
        pid = store.create_person(f"p{i}").person_id
        v = rng.standard_normal(service_recognizer.dim).astype(np.float32)
        store.add_image(pid, f"{i:064x}", v / np.linalg.norm(v), {})
    monkeypatch.setenv("MODEL_PATH", str(tiny_model))
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("GALLERY_SNAPSHOT_DIR", str(tmp_path))
    snapshot.main([])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["version"] == service_recognizer.version and printed["count"] == 50
    assert snapshot.open_current(tmp_path, service_recognizer.version) is not None
