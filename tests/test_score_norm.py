"""AS-norm: the rule's arithmetic, its calibration file, the cohort a gallery cache keeps (built
from Redis or from a host snapshot, followed through changes), and the calibration on made-up
people where the right answer is known."""
from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest

from index.cohort import Cohort, id_hashes, pick_cohort
from recognizer.errors import ModelArtifactError
from recognizer.score_norm import Calibration, as_norm, calibration_path, find_calibration, top_k_stats
from service import snapshot
from service.cache import GalleryCache
from service.store import GalleryStore
from trainer.score_norm import calibrate_threshold

from service_support import unit_vector

DIM = 32
unit = partial(unit_vector, dim=DIM)


def _reference_stats(faces: np.ndarray, cohort: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    top = -np.sort(-(faces @ cohort.T), axis=1)[:, :k]
    return top.mean(1), top.std(1)


def test_the_rule_standardises_each_side_by_its_own_top_cosines():
    rng = np.random.default_rng(0)
    cohort = rng.standard_normal((20, DIM)).astype(np.float32)
    cohort /= np.linalg.norm(cohort, axis=1, keepdims=True)
    faces = np.stack([unit(i) for i in range(2)])
    mean, sd = top_k_stats(faces @ cohort.T, 5)
    ref_mean, ref_sd = _reference_stats(faces, cohort, 5)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)
    np.testing.assert_allclose(sd, ref_sd, rtol=1e-6)
    cos = float(faces[0] @ faces[1])
    z = as_norm(np.array([cos]), (mean[:1], sd[:1]), (mean[1:], sd[1:]))[0]
    assert z == pytest.approx(0.5 * ((cos - ref_mean[0]) / ref_sd[0] + (cos - ref_mean[1]) / ref_sd[1]))
    with pytest.raises(ValueError):
        top_k_stats(faces @ cohort.T, 21)


def test_a_person_is_left_out_of_their_own_cohort():
    ids = [f"p{i}" for i in range(6)]
    vectors = np.stack([unit(i) for i in range(6)])
    cohort = Cohort(ids, vectors, k=2)
    # p0 against the cohort: its own cosine (1.0) would be the top one unless left out
    kept_mean, _ = cohort.stats(vectors[:1], [None])
    left_mean, _ = cohort.stats(vectors[:1], ["p0"])
    assert kept_mean[0] > left_mean[0]
    ref_mean, ref_sd = _reference_stats(vectors[:1], vectors[1:], 2)
    np.testing.assert_allclose(cohort.stats(vectors[:1], ["p0"]), (ref_mean, ref_sd), rtol=1e-6)
    with pytest.raises(ValueError):
        Cohort(ids, vectors, k=6)


def test_id_hashes_are_the_same_for_text_and_a_snapshots_fixed_width_bytes():
    ids = ["a", "alice", "Bob.2", "x" * 128]
    as_bytes = np.array([i.encode() for i in ids], dtype="S128")
    np.testing.assert_array_equal(id_hashes(ids), id_hashes(as_bytes))
    assert len(set(id_hashes(ids).tolist())) == 4
    assert int(id_hashes(["a"])[0]) == 0xAF63DC4C8601EC8C  # FNV-1a 64 of b"a", the published test vector


def test_the_cohort_is_the_smallest_hashes_and_a_larger_newcomer_changes_nothing():
    ids = [f"person-{i}" for i in range(50)]
    chosen = pick_cohort(ids, 10)
    hashes = dict(zip(ids, id_hashes(ids).tolist()))
    assert chosen == sorted(ids, key=lambda p: hashes[p])[:10]
    newcomer = next(f"new-{i}" for i in range(1000) if int(id_hashes([f"new-{i}"])[0]) > hashes[chosen[-1]])
    assert pick_cohort(ids + [newcomer], 10) == chosen
    assert pick_cohort(list(reversed(ids)), 10) == chosen  # order of arrival does not matter


def test_calibration_files_round_trip_and_bad_ones_are_named(tmp_path):
    cal = Calibration("v1", 400, 100, 3.5, 1e-3, "test")
    path = calibration_path(tmp_path / "facerec.pt")
    assert path.name == "facerec.score_norm.json"
    cal.save(path)
    assert Calibration.load(path) == cal
    assert find_calibration(tmp_path / "facerec.pt", "v1") == cal
    assert find_calibration(tmp_path / "facerec.pt", "v2") is None  # another model's: not used
    assert find_calibration(tmp_path / "other.pt", "v1") is None
    body = json.loads(path.read_text())
    path.write_text(json.dumps({**body, "k": 400}))
    with pytest.raises(ModelArtifactError, match="k < cohort_size"):
        Calibration.load(path)
    path.write_text("{not json")
    with pytest.raises(ModelArtifactError, match="cannot read"):
        Calibration.load(path)
    assert find_calibration(tmp_path / "facerec.pt", "v1") is None


def test_calibration_on_made_up_people_holds_its_far_across_cohorts():
    """Made-up people: a centre each, photos scattered round it. The threshold is the mean of the
    draws' FAR thresholds, so the draws' FARs at it straddle the target."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((260, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    val_ids = np.repeat(np.arange(60), 5)
    val = centres[val_ids] + 0.35 * rng.standard_normal((len(val_ids), DIM))
    val /= np.linalg.norm(val, axis=1, keepdims=True)
    report = calibrate_threshold(val, val_ids, centres[60:], cohort_size=100, k=20, far=0.01, draws=8)
    assert report["far_at_threshold"]["min"] <= 0.01 <= report["far_at_threshold"]["max"]
    assert 0.005 < report["far_at_threshold"]["mean"] < 0.02
    assert report["pairs"]["identities"] == 60 and report["draws"] == 8
    with pytest.raises(ValueError):
        calibrate_threshold(val, val_ids, centres[60:], cohort_size=300, k=20)


# -- the cohort a gallery cache keeps, against a real Redis --------------------------------------------


@pytest.fixture
def store(redis_db) -> GalleryStore:
    return GalleryStore(redis_db, "model-a", DIM)


def _add(store: GalleryStore, n: int, start: int = 0) -> list[str]:
    pids = []
    for i in range(start, start + n):
        pid = store.create_person(f"person {i}").person_id
        store.add_image(pid, f"{i:064x}", unit(i), {})
        pids.append(pid)
    return pids


def _expected(store: GalleryStore, size: int) -> list[str]:
    return pick_cohort(store.all_person_ids(), size)


def test_the_cache_keeps_its_cohort_through_enrollments_and_deletions(store):
    cal = Calibration("model-a", 8, 3, 2.0, 1e-3, "test")
    cache = GalleryCache(store, score_norm=cal)
    _add(store, 7)
    cache.sync()
    assert cache.cohort_status() == {"calibrated": True, "active": False, "cohort_size": 8, "people": 7, "k": 3,
                                     "threshold": 2.0}
    probe = unit(1000)
    assert all(m.score is None for m in cache.search(probe, 3, score_norm=True)[0])

    _add(store, 30, start=7)
    cache.sync()
    assert cache.cohort_status()["active"]
    assert cache._cohort_locked().person_ids == _expected(store, 8)

    # a cohort member deleted: the next smallest hash takes their place
    store.delete_person(_expected(store, 8)[3])
    cache.sync()
    assert cache._cohort_locked().person_ids == _expected(store, 8)

    # every score is the rule applied to this cohort, each person left out of their own
    cohort = cache._cohort_locked()
    matches = cache.search(probe, 5, score_norm=True)[0]
    for m in matches:
        person = cache.person_vector(m.person_id)
        others = [r for r, pid in enumerate(cohort.person_ids) if pid != m.person_id]
        p_mean, p_sd = _reference_stats(probe[None], cohort.vectors[others], 3)
        g_mean, g_sd = _reference_stats(person[None], cohort.vectors[others], 3)
        expected = 0.5 * ((m.cosine - p_mean[0]) / p_sd[0] + (m.cosine - g_mean[0]) / g_sd[0])
        assert m.score == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert [m.cosine for m in matches] == sorted((m.cosine for m in matches), reverse=True)
    assert all(m.score is None for m in cache.search(probe, 3)[0])  # only when asked


def test_a_snapshot_cache_picks_the_same_cohort_as_redis(store, tmp_path):
    cal = Calibration("model-a", 10, 3, 2.0, 1e-3, "test")
    pids = _add(store, 300)
    snapshot.write(store, tmp_path)
    # after the snapshot: two cohort members leave, one changes, and newcomers arrive
    members = _expected(store, 10)
    store.delete_person(members[0])
    store.delete_person(members[5])
    store.add_image(members[2], "e" * 64, unit(5000), {})
    _add(store, 40, start=300)
    mapped = GalleryCache(store, str(tmp_path), score_norm=cal)
    mapped.rebuild()
    assert mapped.source == "snapshot"
    from_redis = GalleryCache(store, score_norm=cal)
    from_redis.rebuild()
    expected = _expected(store, 10)
    assert mapped._cohort_locked().person_ids == expected == from_redis._cohort_locked().person_ids
    np.testing.assert_allclose(mapped._cohort_locked().vectors, from_redis._cohort_locked().vectors, atol=2e-3)
    assert len(pids) == 300
