"""The per-host gallery snapshot: IVF-SQ8 scan + float16 re-ranking, mapped read-only, with an overlay."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index import SnapshotIndex, VectorIndex, build_snapshot
from recognizer.errors import GalleryError, InvalidRequestError, NotFoundError

DIM = 64
ROOT = Path(__file__).resolve().parent.parent


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    centres = unit(rng.standard_normal((40, DIM)))
    vecs = unit(centres[rng.integers(0, 40, 4000)] + 0.3 * rng.standard_normal((4000, DIM)))
    ids = rng.permutation(10**6)[:4000].astype(np.int64) * 7 + 3  # sparse, unordered ids
    queries = unit(vecs[rng.integers(0, 4000, 300)] + 0.2 * rng.standard_normal((300, DIM)))
    return ids, vecs, queries


@pytest.fixture
def snapshot_dir(tmp_path, data):
    ids, vecs, _ = data
    meta = build_snapshot(tmp_path / "snap", ids, vecs, nlist=40)
    assert meta["count"] == 4000 and meta["nlist"] == 40
    # 8-bit codes + float16 vectors + the id: 64 + 128 + 8 bytes per 64-d vector, plus list overhead
    assert meta["bytes"]["vectors.npy"] < 4000 * DIM * 2 + 1024
    return tmp_path / "snap"


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_search_matches_exact_search(snapshot_dir, data):
    ids, vecs, queries = data
    exact = VectorIndex.build(ids, vecs, kind="flat")
    snap = SnapshotIndex.open(snapshot_dir)
    assert len(snap) == 4000 and snap.dim == DIM
    ex_cos, ex_ids = exact.search(queries, 5)
    snap.nprobe = 40  # every list: only the 8-bit scan and float16 re-ranking can differ
    cos, got = snap.search(queries, 5)
    assert np.mean(got[:, 0] == ex_ids[:, 0]) >= 0.99
    assert np.all(np.abs(cos[:, 0] - ex_cos[:, 0]) < 2e-3)
    assert np.all(np.diff(cos, axis=1) <= 1e-6)  # best first
    # At fewer lists the 8-bit scan + float16 re-ranking loses (almost) nothing against a float
    # IVF with the same lists (same training sample and seed): the lists decide the recall.
    ivf = VectorIndex.build(ids, vecs, kind="ivf", nlist=40, nprobe=8)
    snap.nprobe = 8
    _, fewer = snap.search(queries, 5)
    _, ivf_ids = ivf.search(queries, 5)
    assert np.mean(fewer[:, 0] == ex_ids[:, 0]) >= np.mean(ivf_ids[:, 0] == ex_ids[:, 0]) - 0.02
    assert set(np.unique(got)) <= set(ids.tolist())


def test_overlay_upsert_remove_reconstruct(snapshot_dir, data):
    ids, vecs, queries = data
    before = digest(snapshot_dir)
    snap = SnapshotIndex.open(snapshot_dir)
    some = int(ids[10])
    stored = snap.reconstruct(some)
    assert float(stored @ vecs[10]) > 0.9999  # float16-rounded
    # replace a vector: the new one answers, the old row no longer does
    new = unit(np.random.default_rng(2).standard_normal((1, DIM)))[0]
    snap.upsert(some, new)
    assert len(snap) == 4000 and some in snap
    np.testing.assert_array_equal(snap.reconstruct(some), new)
    cos, got = snap.search(new, 3)
    assert got[0, 0] == some and cos[0, 0] == pytest.approx(1.0, abs=1e-5)
    old_cos, old_hit = snap.search(vecs[10], 5)
    assert old_cos[0, 0] < 0.999  # the retired row is no longer scanned
    for c, i in zip(old_cos[0], old_hit[0]):
        if i == some:
            assert c == pytest.approx(float(new @ vecs[10]), abs=1e-5)
    # a brand-new id, then remove both it and a snapshot row
    snap.upsert(5, vecs[11])
    assert len(snap) == 4001 and 5 in snap
    snap.remove(5)
    other = int(ids[11])
    snap.remove(other)
    assert other not in snap and 5 not in snap and len(snap) == 3999
    _, hits = snap.search(vecs[11], 10)
    assert other not in hits[0].tolist() and 5 not in hits[0].tolist()
    with pytest.raises(NotFoundError):
        snap.remove(other)
    with pytest.raises(NotFoundError):
        snap.reconstruct(other)
    assert snap.ids().tolist() == sorted((set(ids.tolist()) - {other}))
    assert digest(snapshot_dir) == before  # the mapped files never change


def test_fewer_results_than_k_and_bad_arguments(tmp_path):
    vecs = unit(np.random.default_rng(3).standard_normal((60, DIM)))
    build_snapshot(tmp_path / "s", np.arange(60), vecs, nlist=1)
    snap = SnapshotIndex.open(tmp_path / "s")
    for i in range(58):
        snap.remove(i)
    cos, got = snap.search(vecs[:2], 5)
    assert sorted(got[0][got[0] >= 0].tolist()) == [58, 59]
    assert np.all(got[:, 2:] == -1) and np.all(np.isneginf(cos[:, 2:]))
    for bad in (0, -1, True, 2.5):
        with pytest.raises(InvalidRequestError):
            snap.nprobe = bad
        with pytest.raises(InvalidRequestError):
            snap.refine = bad
    with pytest.raises(InvalidRequestError):
        snap.search(vecs[0], 0)
    with pytest.raises(InvalidRequestError):
        snap.search(np.zeros((1, DIM + 1), np.float32), 1)
    with pytest.raises(InvalidRequestError, match="unique"):
        build_snapshot(tmp_path / "dup", [1, 1], vecs[:2], nlist=1)
    with pytest.raises(InvalidRequestError, match="pair up"):
        build_snapshot(tmp_path / "pair", [1, 2, 3], vecs[:2], nlist=1)


def test_build_streams_a_memory_map_chunk_by_chunk(tmp_path, snapshot_dir, data, monkeypatch):
    """A 10M-person gallery is 20 GB of float32: the build reads it from a map a chunk at a time,
    and the files are byte for byte those of a build from an array in memory."""
    import index.snapshot as snapshot_module

    ids, vecs, _ = data
    mapped = np.lib.format.open_memmap(tmp_path / "people.npy", mode="w+", dtype=np.float32, shape=vecs.shape)
    mapped[:] = vecs
    mapped.flush()
    monkeypatch.setattr(snapshot_module, "_CHUNK", 700)  # 6 chunks of unordered ids
    build_snapshot(tmp_path / "streamed", ids, np.load(tmp_path / "people.npy", mmap_mode="r"), nlist=40)

    def files(d: Path) -> dict[str, str]:  # meta.json differs only in its build seconds
        return {k: v for k, v in digest(d).items() if k != "meta.json"}

    assert files(tmp_path / "streamed") == files(snapshot_dir) and len(files(snapshot_dir)) == 3

    order = np.argsort(ids)  # ids already sorted: chunks are plain slices of the map
    sorted_vecs = np.lib.format.open_memmap(tmp_path / "sorted.npy", mode="w+", dtype=np.float32, shape=vecs.shape)
    sorted_vecs[:] = vecs[order]
    build_snapshot(tmp_path / "sorted", ids[order], sorted_vecs, nlist=40)
    same = {k: v for k, v in files(tmp_path / "sorted").items() if k != "ivf.faiss"}  # another training sample
    assert same == {k: v for k, v in files(snapshot_dir).items() if k != "ivf.faiss"} and len(same) == 2

    mapped[3500, 7] = np.nan  # a bad row in a late chunk: refused, and no snapshot is left behind
    with pytest.raises(InvalidRequestError, match="NaN"):
        build_snapshot(tmp_path / "bad", ids, mapped, nlist=40)
    assert not any((tmp_path / "bad").glob("*.npy")) and not (tmp_path / "bad" / "meta.json").exists()


def test_missing_or_inconsistent_snapshot_is_a_gallery_error(tmp_path, snapshot_dir):
    with pytest.raises(GalleryError):
        SnapshotIndex.open(tmp_path / "nothing")
    meta = json.loads((snapshot_dir / "meta.json").read_text())
    meta["count"] = 3999
    (snapshot_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(GalleryError, match="inconsistent"):
        SnapshotIndex.open(snapshot_dir)


def test_two_processes_share_one_snapshot(snapshot_dir, data):
    """What a host's server processes do: each maps the same files and gets the same answers."""
    _, _, queries = data
    np.save(snapshot_dir.parent / "q.npy", queries[:20])
    code = ("import sys, numpy as np; from index import SnapshotIndex; s = SnapshotIndex.open(sys.argv[1]); "
            "print(s.search(np.load(sys.argv[2]), 3)[1].tolist())")
    answers = [subprocess.run([sys.executable, "-c", code, str(snapshot_dir), str(snapshot_dir.parent / "q.npy")],
                              cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout
               for _ in range(2)]
    local = SnapshotIndex.open(snapshot_dir).search(queries[:20], 3)[1].tolist()
    assert answers[0] == answers[1] == f"{local}\n"
