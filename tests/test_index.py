"""Tests for index/: mean arithmetic, gallery bookkeeping, persistence, FAISS wrapper.

Real FAISS, no mocks. Small dimensions except where the shape of real embeddings
matters (the IVF recall test).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from index import Gallery, Match, VectorIndex, cosine_to_angle_deg, decide, mean_embedding
from index.gallery import MANIFEST_NAME
from recognizer.errors import (
    ConflictError,
    FaceServiceError,
    GalleryError,
    InvalidRequestError,
    NotFoundError,
)

DIM = 32


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def np_mean(vectors: list[np.ndarray]) -> np.ndarray:
    """Reference: normalised mean of normalised embeddings, in float64."""
    m = np.mean(np.stack(vectors).astype(np.float64), axis=0)
    return m / np.linalg.norm(m)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def random_images(rng: np.random.Generator, n: int, prefix: str, dim: int = DIM) -> dict[str, np.ndarray]:
    vecs = unit(rng.standard_normal((n, dim)))
    return {f"{prefix}{i:03d}": vecs[i] for i in range(n)}


def make_gallery(
    rng: np.random.Generator, n_people: int = 5, n_images: int = 3, store: dict | None = None
) -> Gallery:
    """People p0..p{n-1}; their images are also put in ``store`` (pid -> {hash: vec})."""
    g = Gallery("model-v1", DIM)
    for p in range(n_people):
        pid = g.add_person(f"Person {p}", person_id=f"p{p}", metadata={"n": p})
        imgs = random_images(rng, n_images, f"p{p}-")
        g.add_images(pid, imgs)
        if store is not None:
            store[pid] = imgs
    return g


# -- vectors ------------------------------------------------------------------------------


def test_mean_embedding_and_angle(rng):
    vecs = unit(rng.standard_normal((7, DIM)))
    got = mean_embedding(vecs)
    assert got.dtype == np.float32 and got.shape == (DIM,)
    np.testing.assert_allclose(got, np_mean(list(vecs)), atol=1e-6)
    assert abs(np.linalg.norm(got) - 1) < 1e-6
    with pytest.raises(InvalidRequestError):
        mean_embedding(np.zeros((0, DIM), np.float32))
    with pytest.raises(InvalidRequestError):
        mean_embedding(np.stack([vecs[0], -vecs[0]]))  # mean has no direction

    assert cosine_to_angle_deg(1.0000001) == 0.0  # rounding past 1 is clipped, not NaN
    assert cosine_to_angle_deg(-1.5) == pytest.approx(180.0)
    assert cosine_to_angle_deg(0.0) == pytest.approx(90.0)
    np.testing.assert_allclose(cosine_to_angle_deg(np.array([1.0, 0.5])), [0.0, 60.0], atol=1e-9)


# -- mean-update arithmetic -----------------------------------------------------------------


def test_mean_updates_touch_only_that_person(rng):
    g = make_gallery(rng, n_people=4)
    others = {pid: g.person_vector(pid).tobytes() for pid in ("p1", "p2", "p3")}

    a = g.add_person("Alice", person_id="alice")
    batch1 = random_images(rng, 3, "a1-")
    batch2 = random_images(rng, 4, "a2-")
    assert g.add_images(a, batch1) == 3
    np.testing.assert_allclose(g.person_vector(a), np_mean(list(batch1.values())), atol=1e-6)
    assert g.add_images(a, batch2) == 4
    all_vecs = [*batch1.values(), *batch2.values()]
    np.testing.assert_allclose(g.person_vector(a), np_mean(all_vecs), atol=1e-6)

    g.remove_image(a, "a1-001")
    remaining = [v for h, v in {**batch1, **batch2}.items() if h != "a1-001"]
    np.testing.assert_allclose(g.person_vector(a), np_mean(remaining), atol=1e-6)
    assert g.get_person(a).image_count == 6

    # Updating p0 too must leave p1..p3 bit-identical in the index.
    g.add_images("p0", random_images(rng, 2, "p0-extra-"))
    g.remove_image("p0", "p0-000")
    for pid, before in others.items():
        assert g.person_vector(pid).tobytes() == before


def test_person_without_images_is_listed_but_not_searchable(rng):
    g = make_gallery(rng, n_people=2, n_images=1)
    imgs = random_images(rng, 2, "z")
    z = g.add_person("Zed")
    assert g.person_vector(z) is None
    g.add_images(z, imgs)
    q = imgs["z000"]
    assert g.search(q, k=1)[0][0].person_id == z
    g.remove_image(z, "z000")
    g.remove_image(z, "z001")
    assert g.person_vector(z) is None
    assert len(g.index) == 2
    assert z in [p.person_id for p in g.people()]
    assert all(m.person_id != z for m in g.search(q, k=10)[0])


def test_duplicate_hash_counts_once(rng):
    g = Gallery("model-v1", DIM)
    pid = g.add_person("Bob")
    imgs = random_images(rng, 3, "h")
    assert g.add_images(pid, {"h000": imgs["h000"], "h001": imgs["h001"]}) == 2
    # h001 again (even with another vector) is skipped; only h002 is new.
    other = unit(rng.standard_normal(DIM))
    assert g.add_images(pid, {"h001": other, "h002": imgs["h002"]}) == 1
    assert g.add_images(pid, {"h002": imgs["h002"]}) == 0
    assert g.get_person(pid).image_count == 3
    np.testing.assert_allclose(g.person_vector(pid), np_mean(list(imgs.values())), atol=1e-6)


# -- people bookkeeping -----------------------------------------------------------------------


def test_people_listing_and_errors(rng):
    g = make_gallery(rng, n_people=3)
    pid = g.add_person("  person 1 ", metadata={"team": "b"})
    assert [p.person_id for p in g.find_by_name("PERSON 1")] == ["p1", pid]
    info = g.get_person(pid)
    assert (info.name, info.image_count, info.metadata) == ("person 1", 0, {"team": "b"})
    info.metadata["team"] = "changed"  # a copy: the gallery is unaffected
    assert g.get_person(pid).metadata == {"team": "b"}
    assert len(pid) == 32 and len(g) == 4 and pid in g

    with pytest.raises(ConflictError):
        g.add_person("again", person_id="p1")
    with pytest.raises(NotFoundError):
        g.get_person("nobody")
    with pytest.raises(NotFoundError):
        g.add_images("nobody", random_images(rng, 1, "x"))
    with pytest.raises(NotFoundError):
        g.remove_image("p1", "no-such-hash")
    with pytest.raises(InvalidRequestError):
        g.add_person("bad id", person_id="has space")
    with pytest.raises(InvalidRequestError):
        g.add_person("")
    with pytest.raises(InvalidRequestError):
        g.add_person("meta", metadata={"x": object()})

    g.remove_person("p1")
    assert "p1" not in g and len(g.index) == 2
    with pytest.raises(NotFoundError):
        g.remove_person("p1")


def test_remove_person_takes_effect_at_once(rng):
    g = make_gallery(rng, n_people=3)
    q = g.person_vector("p2")
    assert g.search(q, k=1)[0][0].person_id == "p2"
    g.remove_person("p2")
    assert all(m.person_id != "p2" for m in g.search(q, k=5)[0])


# -- search -------------------------------------------------------------------------------------


def test_threshold_decides_match_or_unknown(rng):
    g = make_gallery(rng, n_people=5)
    target = g.person_vector("p3")
    noisy = unit(target + 0.3 * unit(rng.standard_normal(DIM)))
    matches = g.search(noisy, k=3)[0]
    best = matches[0]
    assert best.person_id == "p3" and best.name == "Person 3"
    assert [m.cosine for m in matches] == sorted((m.cosine for m in matches), reverse=True)
    assert best.angle_deg == pytest.approx(cosine_to_angle_deg(best.cosine))

    assert decide(matches, best.cosine) == "match"  # inclusive
    assert decide(matches, best.cosine - 0.01) == "match"
    assert decide(matches, min(1.0, best.cosine + 0.01)) == "unknown"
    assert decide([], 0.3) == "unknown"

    # With threshold, candidates below it are dropped; a stranger comes back empty.
    assert g.search(noisy, k=3, threshold=best.cosine)[0] == [best]
    stranger = unit(rng.standard_normal(DIM))
    assert g.search(stranger, k=5, threshold=0.9) == [[]]
    assert decide(g.search(stranger, k=5)[0], 0.9) == "unknown"


def test_batched_queries_equal_single_queries(rng):
    g = make_gallery(rng, n_people=40, n_images=2)
    queries = unit(rng.standard_normal((30, DIM)))  # >= 20 rows: FAISS's BLAS path
    batched = g.search(queries, k=3)
    assert len(batched) == 30
    for q, row in zip(queries, batched):
        single = g.search(q, k=3)
        assert len(single) == 1
        assert [m.person_id for m in single[0]] == [m.person_id for m in row]
        np.testing.assert_allclose([m.cosine for m in single[0]], [m.cosine for m in row], atol=1e-5)


def test_search_edge_cases(rng):
    g = Gallery("model-v1", DIM)
    assert g.search(unit(rng.standard_normal((2, DIM))), k=3) == [[], []]
    g = make_gallery(rng, n_people=2)
    res = g.search(unit(rng.standard_normal(DIM)), k=10)  # k > people: no padding entries
    assert len(res[0]) == 2 and all(isinstance(m, Match) for m in res[0])
    with pytest.raises(InvalidRequestError):
        g.search(np.zeros(DIM, np.float32))  # no direction
    with pytest.raises(InvalidRequestError):
        g.search(unit(rng.standard_normal(DIM)), k=0)


def test_wrong_dimension_and_bad_values(rng):
    g = make_gallery(rng, n_people=2)
    before = g.person_vector("p0").tobytes()
    with pytest.raises(InvalidRequestError) as exc:
        g.add_images("p0", {"ok": unit(rng.standard_normal(DIM)), "bad": np.ones(DIM - 1, np.float32)})
    assert str(DIM) in exc.value.message and str(DIM - 1) in exc.value.message
    assert g.get_person("p0").image_count == 3  # nothing half-applied
    assert g.person_vector("p0").tobytes() == before
    with pytest.raises(InvalidRequestError):
        g.search(np.ones(DIM + 1, np.float32))
    nan = np.full(DIM, np.nan, np.float32)
    with pytest.raises(InvalidRequestError):
        g.add_images("p0", {"nan": nan})
    with pytest.raises(InvalidRequestError):
        g.search(nan)
    with pytest.raises(InvalidRequestError):
        g.add_images("p0", {"txt": np.array(["a"] * DIM)})
    idx = VectorIndex(DIM)
    with pytest.raises(InvalidRequestError) as exc:
        idx.upsert(1, np.ones(DIM * 2, np.float32))
    assert f"expected dimension {DIM}, got {DIM * 2}" in exc.value.message
    with pytest.raises(InvalidRequestError):
        idx.upsert(-1, unit(np.ones(DIM)))
    with pytest.raises(InvalidRequestError):
        idx.search(np.ones((2, 3), np.float32), 1)


# -- persistence ----------------------------------------------------------------------------------


def test_save_load_round_trip(rng, tmp_path):
    images: dict = {}
    g = make_gallery(rng, n_people=6, store=images)
    g.add_person("Empty One", person_id="empty")
    queries = unit(rng.standard_normal((4, DIM)))
    g.save(tmp_path / "gal")
    h = Gallery.load(tmp_path / "gal", "model-v1")
    assert (h.model_version, h.dim) == ("model-v1", DIM)
    assert h.people() == g.people()
    assert h.get_person("p2").metadata == {"n": 2}
    for pid in ("p0", "p5"):
        assert h.person_vector(pid).tobytes() == g.person_vector(pid).tobytes()
    assert h.person_vector("empty") is None
    assert h.search(queries, k=3) == g.search(queries, k=3)

    # Keep editing after load; new int ids must not collide with old ones.
    h.remove_person("p0")
    new = h.add_person("New")
    h.add_images(new, random_images(rng, 2, "new"))
    h.remove_image("p1", "p1-000")
    h.save(tmp_path / "gal")
    k = Gallery.load(tmp_path / "gal", "model-v1", dim=DIM)
    assert k.people() == h.people()
    assert k.search(queries, k=4) == h.search(queries, k=4)
    np.testing.assert_allclose(
        k.person_vector("p1"), np_mean([v for hh, v in images["p1"].items() if hh != "p1-000"]),
        atol=1e-6,
    )

    # Manifest + current data files + the previous generation; no temp files left.
    k.save(tmp_path / "gal")
    names = sorted(os.listdir(tmp_path / "gal"))
    assert MANIFEST_NAME in names and not [n for n in names if n.endswith(".tmp")]
    assert len(names) == 5


def test_rebuild_index_as_ivf_keeps_vectors(rng, tmp_path):
    g = make_gallery(rng, n_people=80, n_images=1)
    queries = unit(rng.standard_normal((5, DIM)))
    vectors = {p.person_id: g.person_vector(p.person_id).tobytes() for p in g.people()}
    g.rebuild_index(kind="ivf")
    assert g.index.kind == "ivf"
    g.index.nprobe = g.index.nlist
    assert {pid: g.person_vector(pid).tobytes() for pid in vectors} == vectors
    g.remove_person("p4")
    g.add_images("p5", random_images(rng, 1, "more"))
    g.save(tmp_path)
    h = Gallery.load(tmp_path, "model-v1")
    assert h.index.kind == "ivf" and h.search(queries, k=3) == g.search(queries, k=3)


def test_open_or_create(tmp_path):
    g = Gallery.open_or_create(tmp_path / "missing", "model-v1", DIM)
    assert len(g) == 0 and g.dim == DIM
    assert not (tmp_path / "missing").exists()  # nothing written until save
    with pytest.raises(GalleryError):
        Gallery.load(tmp_path / "missing", "model-v1")
    g.add_person("A", person_id="a")
    g.save(tmp_path / "missing")
    assert Gallery.open_or_create(tmp_path / "missing", "model-v1", DIM).people() == g.people()


def test_load_refuses_other_model_version(rng, tmp_path):
    make_gallery(rng).save(tmp_path)
    with pytest.raises(GalleryError) as exc:
        Gallery.load(tmp_path, "model-v2")
    assert "model-v1" in exc.value.message and "model-v2" in exc.value.message
    with pytest.raises(GalleryError):
        Gallery.open_or_create(tmp_path, "model-v2", DIM)
    with pytest.raises(GalleryError) as exc:
        Gallery.load(tmp_path, "model-v1", dim=DIM * 2)
    assert str(DIM * 2) in exc.value.message


def _data_file(directory, prefix: str):
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    return directory / manifest[prefix]["file"]


@pytest.mark.parametrize("target", ["embeddings", "index", "manifest-truncated", "manifest-garbage"])
def test_corrupt_files_raise_gallery_error(rng, tmp_path, target):
    make_gallery(rng).save(tmp_path)
    if target in ("embeddings", "index"):
        path = _data_file(tmp_path, target)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif target == "manifest-truncated":
        data = (tmp_path / MANIFEST_NAME).read_bytes()
        (tmp_path / MANIFEST_NAME).write_bytes(data[: len(data) // 2])
    else:
        (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": "face-gallery", "format_version": 1,
                                                          "model_version": "model-v1", "dim": "x"}))
    with pytest.raises(GalleryError):
        Gallery.load(tmp_path, "model-v1")


def test_truncated_index_file_without_checksum(rng, tmp_path):
    """VectorIndex.load itself turns FAISS parse failures into GalleryError."""
    idx = VectorIndex.build(np.arange(10), unit(rng.standard_normal((10, DIM))))
    idx.save(tmp_path / "x.faiss")
    data = (tmp_path / "x.faiss").read_bytes()
    (tmp_path / "x.faiss").write_bytes(data[:100])
    with pytest.raises(GalleryError):
        VectorIndex.load(tmp_path / "x.faiss")
    (tmp_path / "y.faiss").write_bytes(b"not an index at all")
    with pytest.raises(GalleryError):
        VectorIndex.load(tmp_path / "y.faiss")
    with pytest.raises(GalleryError):
        VectorIndex.load(tmp_path / "absent.faiss")
    assert issubclass(GalleryError, FaceServiceError)


# -- VectorIndex ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_vector_index_operations(rng, tmp_path, kind):
    n = 2000
    ids = np.arange(n, dtype=np.int64) * 10 + 5
    vecs = unit(rng.standard_normal((n, DIM)))
    idx = VectorIndex.build(ids, vecs, kind=kind)
    assert idx.kind == kind and len(idx) == n and 5 in idx and 6 not in idx
    if kind == "ivf":
        idx.nprobe = idx.nlist  # exhaustive: results must be exact
    assert idx.reconstruct(15).tobytes() == vecs[1].tobytes()

    cos, found = idx.search(vecs[:3], 2)
    assert cos.shape == found.shape == (3, 2)
    assert found[:, 0].tolist() == ids[:3].tolist()
    np.testing.assert_allclose(cos[:, 0], 1.0, atol=1e-5)

    before = {int(i): idx.reconstruct(int(i)).tobytes() for i in ids[100:110]}
    new_vec = unit(rng.standard_normal(DIM))
    idx.upsert(5, new_vec)
    idx.upsert(99_999, unit(rng.standard_normal(DIM)))
    idx.remove(25)
    assert len(idx) == n and 25 not in idx and 99_999 in idx
    assert idx.reconstruct(5).tobytes() == new_vec.tobytes()
    for i, b in before.items():
        assert idx.reconstruct(i).tobytes() == b
    with pytest.raises(NotFoundError):
        idx.remove(25)
    with pytest.raises(NotFoundError):
        idx.reconstruct(25)

    idx.save(tmp_path / "i.faiss")
    back = VectorIndex.load(tmp_path / "i.faiss")
    assert back.kind == kind and len(back) == len(idx) and back.nprobe == idx.nprobe
    assert back.ids().tolist() == idx.ids().tolist()
    q = unit(rng.standard_normal((5, DIM)))
    for a, b in zip(back.search(q, 4), idx.search(q, 4)):
        np.testing.assert_array_equal(a, b)
    back.upsert(25, vecs[2])  # a loaded IVF index can still be updated
    assert back.reconstruct(25).tobytes() == vecs[2].tobytes()


def test_vector_index_padding_and_auto(rng):
    idx = VectorIndex(DIM)
    cos, ids = idx.search(unit(rng.standard_normal(DIM)), 3)
    assert ids.tolist() == [[-1, -1, -1]] and np.all(np.isneginf(cos))
    idx.upsert(7, unit(rng.standard_normal(DIM)))
    cos, ids = idx.search(unit(rng.standard_normal((2, DIM))), 3)
    assert ids[:, 0].tolist() == [7, 7] and np.all(ids[:, 1:] == -1) and np.all(np.isneginf(cos[:, 1:]))
    assert VectorIndex.build(np.arange(100), unit(rng.standard_normal((100, DIM)))).kind == "flat"
    with pytest.raises(InvalidRequestError):
        VectorIndex.build([1, 1], unit(rng.standard_normal((2, DIM))))


def test_ivf_recall_on_clustered_embeddings():
    """IVF top-1 agrees with exact search on data shaped like face embeddings.

    Real identities are not uniform on the sphere: they cluster (demographics,
    capture conditions). Model that as 200 random centres, 20k people scattered
    around them, and probe faces = a person's vector plus noise (cos ~0.7 to it).
    """
    rng = np.random.default_rng(7)
    dim, n, n_clusters, n_queries = 512, 20_000, 200, 500
    centres = unit(rng.standard_normal((n_clusters, dim), dtype=np.float32))
    labels = rng.integers(0, n_clusters, n)
    noise = rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    people = unit(centres[labels] + 1.5 * noise)
    ids = np.arange(n, dtype=np.int64)
    who = rng.choice(n, n_queries, replace=False)
    queries = unit(people[who] + rng.standard_normal((n_queries, dim), dtype=np.float32) / np.sqrt(dim))

    exact = VectorIndex.build(ids, people, kind="flat")
    approx = VectorIndex.build(ids, people, kind="ivf")
    assert approx.kind == "ivf"
    _, exact_ids = exact.search(queries, 1)
    _, approx_ids = approx.search(queries, 1)
    assert np.mean(exact_ids[:, 0] == who) > 0.99  # the task is solvable exactly
    recall = float(np.mean(approx_ids[:, 0] == exact_ids[:, 0]))
    assert recall >= 0.95, recall
