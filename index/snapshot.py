"""A gallery index built once per host and memory-mapped, read-only, by every server process.

Why: at a million people an in-process ``IndexIVFFlat`` costs each server process 2.1 GB and a
minute or more to build, and at nprobe 32 it gives the exact answer for only 96% of queries. A
snapshot directory is written once (:func:`build_snapshot`) and opened by any number of
processes (:meth:`SnapshotIndex.open`) in milliseconds; the kernel's page cache holds one copy
for all of them. It has three files:

* ``ivf.faiss`` -- an ``IndexIVFScalarQuantizer`` with 8-bit codes (512 bytes a person), the
  candidate generator. Its inverted lists are mapped with ``IO_FLAG_MMAP_IFC | IO_FLAG_READ_ONLY``
  (zero-copy array lists: ``IO_FLAG_MMAP``'s on-disk lists searched 10x slower here);
  only the coarse quantizer (``nlist`` x d floats) is read into each process.
* ``vectors.npy`` -- every person's vector in float16 (1 KB), memory-mapped, to re-rank the
  ``refine`` x k best candidates of the coarse scan by their (nearly exact) cosine: 8-bit codes
  find the neighbourhood, float16 orders it. float16 keeps cosines within ~1e-4 of float32.
* ``ids.npy`` -- the int64 id of every row, sorted, memory-mapped (id -> row by binary search).

Changes after the snapshot live in the process: an exact :class:`VectorIndex` overlay for new
and changed vectors, and tombstones for rows that were removed or replaced (excluded from the
coarse scan with an ``IDSelector``). ``upsert``/``remove``/``reconstruct``/``search`` keep
``VectorIndex``'s meaning, so the snapshot can stand in for it; rebuild the snapshot when the
overlay grows. ``reconstruct`` of a snapshot row returns its float16-rounded vector.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

import faiss
import numpy as np

from recognizer.atomic import atomic_write, atomic_write_bytes
from recognizer.errors import GalleryError, InvalidRequestError, NotFoundError

from .faiss_index import VectorIndex, _check_id, _check_ids, default_nlist, train_ivf
from .vectors import check_matrix

FORMAT = "face-gallery-snapshot"
#: Lists probed per query; measured on a 1M-person gallery (docs/BENCHMARKS.md).
DEFAULT_NPROBE = 64
#: Candidates re-ranked from float16 per wanted result (k=5 -> 40 candidates).
DEFAULT_REFINE = 8
_FILES = ("ivf.faiss", "vectors.npy", "ids.npy")
_CHUNK = 65536  # rows read, checked and added at a time


def build_snapshot(
    directory: str | os.PathLike[str],
    ids: Iterable[int] | np.ndarray,
    vectors: np.ndarray,
    *,
    nlist: int | None = None,
) -> dict:
    """Write a snapshot of ``vectors`` (n, d unit rows) under ``ids`` into ``directory``.

    ``vectors`` may be a memory map larger than RAM (a 10M-person gallery is 20 GB of float32):
    it is read one chunk at a time, so the build holds the 8-bit codes, a training sample and a
    chunk, never a float copy of the gallery. Each file is written to a temp file and renamed,
    ``meta.json`` last, so a reader that opens the directory during a rebuild sees the old
    snapshot or the new one. Returns the metadata (sizes and build seconds).
    """
    start = time.perf_counter()
    id_arr = _check_ids(ids)
    shape = np.shape(vectors)
    if len(shape) != 2 or shape[1] == 0:
        raise InvalidRequestError(f"vectors must be (n, d), got shape {shape}")
    n, dim = int(shape[0]), int(shape[1])
    if id_arr.shape[0] != n:
        raise InvalidRequestError(f"{id_arr.shape[0]} ids but {n} vectors; they must pair up")
    if n == 0:
        raise InvalidRequestError("a snapshot needs vectors to train on; got none")
    order = np.argsort(id_arr, kind="stable")
    id_arr = id_arr[order]
    if np.any(id_arr[1:] == id_arr[:-1]):
        raise InvalidRequestError("ids must be unique: one vector per id")
    lists = default_nlist(n) if nlist is None else int(nlist)
    if not 1 <= lists <= n:
        raise InvalidRequestError(f"nlist must be in [1, {n}], got {nlist}")
    in_order = bool(np.all(order[1:] > order[:-1]))  # ids already sorted: rows are plain slices

    def chunks() -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 rows) in id order, checked a chunk at a time."""
        for s in range(0, n, _CHUNK):
            if in_order:
                yield s, check_matrix(vectors[s:s + _CHUNK], dim, "vectors")
                continue
            wanted = order[s:s + _CHUNK]
            ascending = np.sort(wanted)  # forward reads of a memory map, then back to id order
            yield s, check_matrix(vectors[ascending], dim, "vectors")[np.searchsorted(ascending, wanted)]

    ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, lists, faiss.ScalarQuantizer.QT_8bit,
                                        faiss.METRIC_INNER_PRODUCT)
    train_ivf(ivf, vectors)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def write_half(tmp: str) -> None:  # float16 rows streamed into a .npy, never whole in memory
        half = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))
        for s, block in chunks():  # rows in id order: the faiss label is the row number
            ivf.add_with_ids(block, np.arange(s, s + len(block), dtype=np.int64))
            half[s:s + len(block)] = block
        half.flush()
        del half

    atomic_write(d / "vectors.npy", write_half)
    atomic_write(d / "ivf.faiss", lambda tmp: faiss.write_index(ivf, tmp))
    del ivf
    _save_npy(d / "ids.npy", id_arr)
    meta = {"format": FORMAT, "format_version": 1, "count": n, "dim": dim, "nlist": lists,
            "codes": "sq8", "refine_store": "float16", "build_s": round(time.perf_counter() - start, 3),
            "bytes": {name: os.path.getsize(d / name) for name in _FILES}}
    atomic_write_bytes(d / "meta.json", json.dumps(meta, indent=1).encode())
    return meta


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a path would get ".npy" appended to the temp name
            np.save(fh, array, allow_pickle=False)

    atomic_write(path, write)


class SnapshotIndex:
    """A read-only mapped snapshot plus this process's changes; the API of ``VectorIndex``.

    Not thread-safe (like ``VectorIndex``): callers hold a lock around it.
    """

    def __init__(self, ivf: faiss.IndexIVF, vectors: np.ndarray, ids: np.ndarray, meta: dict) -> None:
        self._ivf = ivf
        self._vectors = vectors
        self._row_ids = ids
        self.meta = meta
        self.dim = int(ivf.d)
        self._overlay = VectorIndex(self.dim)
        self._dead: set[int] = set()  # snapshot rows removed or replaced since it was built
        self._params = faiss.SearchParametersIVF()
        self._selector: faiss.IDSelector | None = None
        self.nprobe = DEFAULT_NPROBE
        self.refine = DEFAULT_REFINE

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> "SnapshotIndex":
        """Map a snapshot written by :func:`build_snapshot`; GalleryError if it is missing,
        incomplete or inconsistent."""
        d = Path(directory)
        try:
            meta = json.loads((d / "meta.json").read_text("utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError("not a gallery snapshot")
            ivf = faiss.read_index(str(d / "ivf.faiss"), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
            # plain ndarray views of the mappings: np.memmap's own indexing is slower per call
            vectors = np.asarray(np.load(d / "vectors.npy", mmap_mode="r", allow_pickle=False))
            ids = np.asarray(np.load(d / "ids.npy", mmap_mode="r", allow_pickle=False))
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise GalleryError(f"gallery snapshot at {d} is missing or unreadable: {exc}", path=str(d)) from None
        n, dim = meta["count"], meta["dim"]
        if (ivf.ntotal != n or ivf.d != dim or vectors.shape != (n, dim) or vectors.dtype != np.float16
                or ids.shape != (n,) or ids.dtype != np.int64):
            raise GalleryError(f"gallery snapshot at {d} is inconsistent (files from different builds?)",
                               path=str(d))
        return cls(ivf, vectors, ids, meta)

    # -- settings ---------------------------------------------------------------------

    @property
    def nprobe(self) -> int:
        """Lists searched per query."""
        return int(self._params.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidRequestError(f"nprobe must be a positive integer, got {value!r}")
        self._params.nprobe = int(min(value, self._ivf.nlist))

    @property
    def refine(self) -> int:
        """Candidates re-ranked from float16 per wanted result."""
        return self._refine

    @refine.setter
    def refine(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidRequestError(f"refine must be a positive integer, got {value!r}")
        self._refine = int(value)

    # -- membership -------------------------------------------------------------------

    def _row(self, key: int) -> int | None:
        row = int(np.searchsorted(self._row_ids, key))
        if row < len(self._row_ids) and int(self._row_ids[row]) == key and row not in self._dead:
            return row
        return None

    def __len__(self) -> int:
        return len(self._row_ids) - len(self._dead) + len(self._overlay)

    def __contains__(self, id: object) -> bool:
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)) or not 0 <= int(id) < 2**63:
            return False
        return int(id) in self._overlay or self._row(int(id)) is not None

    def ids(self) -> np.ndarray:
        """All ids present, sorted (int64)."""
        alive = np.ones(len(self._row_ids), bool)
        alive[list(self._dead)] = False
        return np.union1d(np.asarray(self._row_ids)[alive], self._overlay.ids())

    # -- mutation ---------------------------------------------------------------------

    def upsert(self, id: int, vector: np.ndarray) -> None:
        """Set the vector of ``id``: a snapshot row is retired and the new vector kept in the overlay."""
        key = _check_id(id)
        vec = check_matrix(vector, self.dim, "vector")
        self._overlay.upsert(key, vec)
        self._retire(key)

    def remove(self, id: int) -> None:
        """Delete ``id``'s vector; it stops matching immediately."""
        key = _check_id(id)
        if key in self._overlay:
            self._overlay.remove(key)
            self._retire(key)
        elif self._row(key) is not None:
            self._retire(key)
        else:
            raise NotFoundError(f"id {key} is not in the index", id=key)

    def _retire(self, key: int) -> None:
        row = self._row(key)
        if row is not None:
            self._dead.add(row)
            rows = np.fromiter(self._dead, np.int64, len(self._dead))
            self._selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(rows))
            self._params.sel = self._selector

    # -- queries ----------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product, as ``VectorIndex.search``: (cosines, ids), best first,
        missing slots -inf / -1. The coarse scan's ``refine * k`` candidates are re-ranked by
        their float16 vectors and merged with the overlay's exact results."""
        q = check_matrix(queries, self.dim, "queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidRequestError(f"k must be a positive integer, got {k!r}")
        n, k = q.shape[0], int(k)
        out_cos = np.full((n, k), -np.inf, np.float32)
        out_ids = np.full((n, k), -1, np.int64)
        if n == 0:
            return out_cos, out_ids
        wanted = min(k * self._refine, max(1, len(self._row_ids)))
        _, rows = self._ivf.search(q, wanted, params=self._params)
        over_cos, over_ids = self._overlay.search(q, k)
        for i in range(n):
            cand = np.sort(rows[i][rows[i] >= 0])  # ascending rows: forward reads of the mapping
            exact = self._vectors[cand].astype(np.float32) @ q[i]
            cand_ids = self._row_ids[cand]
            cos = np.concatenate([exact, over_cos[i]])
            ids = np.concatenate([cand_ids, over_ids[i]])
            best = np.argsort(-cos, kind="stable")[:k]
            best = best[ids[best] >= 0]
            out_cos[i, :len(best)], out_ids[i, :len(best)] = cos[best], ids[best]
        return out_cos, out_ids

    def reconstruct(self, id: int) -> np.ndarray:
        """The vector of ``id`` (float32, (d,)): exact from the overlay, float16-rounded from the snapshot."""
        key = _check_id(id)
        if key in self._overlay:
            return self._overlay.reconstruct(key)
        row = self._row(key)
        if row is None:
            raise NotFoundError(f"id {key} is not in the index", id=key)
        return np.asarray(self._vectors[row], dtype=np.float32)
