"""A thin wrapper over FAISS: one unit vector per int64 id, searched by inner product.

Vectors are L2-normalised, so inner product is cosine and the largest score is the
smallest angle. Two layouts:

* ``flat`` -- ``IndexIDMap2(IndexFlatIP)``: exact, no training, fine up to tens of
  thousands of vectors.
* ``ivf`` -- ``IndexIVFFlat`` (inner product) used *directly* with ``add_with_ids``
  and a hashtable direct map. Not wrapped in ``IndexIDMap2``: that wrapper's
  ``remove_ids`` assumes the sub-index renumbers its entries after a removal the
  way a flat index does, which IVF does not, so ids and vectors would drift apart.
  The hashtable direct map gives ``reconstruct(id)`` and ``remove_ids`` (which
  then requires an ``IDSelectorArray``). Approximate: searches ``nprobe`` of
  ``nlist`` lists.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Literal

import faiss
import numpy as np

from recognizer.atomic import atomic_write
from recognizer.errors import GalleryError, InvalidRequestError, NotFoundError

from .vectors import check_matrix

Kind = Literal["auto", "flat", "ivf"]

#: ``kind="auto"`` builds an exact index below this many vectors, IVF at or above.
FLAT_MAX = 50_000
#: Lists probed per query by IVF indexes unless told otherwise.
DEFAULT_NPROBE = 32
# FAISS warns (and k-means degrades) with fewer than 39 training points per list.
_MIN_POINTS_PER_LIST = 39


TRAIN_POINTS_PER_LIST = 64
TRAIN_ITERATIONS = 10


def default_nlist(n: int) -> int:
    """About 4*sqrt(n) lists, but never fewer than 39 training vectors per list."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // _MIN_POINTS_PER_LIST))


def train_ivf(ivf: faiss.IndexIVF, vecs: np.ndarray) -> None:
    """Train an IVF index's lists (and codes) on a sample of unit vectors ``vecs``.

    Spherical k-means keeps centroids on the unit sphere, like the data. k-means on every
    vector of a million-person gallery takes many minutes on 2 cores; 64 points per list and
    10 iterations place the lists as well for search purposes.
    """
    n, lists = vecs.shape[0], ivf.nlist
    ivf.cp.spherical = True
    ivf.cp.niter = TRAIN_ITERATIONS
    sample = n if n <= TRAIN_POINTS_PER_LIST * lists else TRAIN_POINTS_PER_LIST * lists
    # sorted rows: forward reads when ``vecs`` is a memory map larger than RAM
    rows = np.sort(np.random.default_rng(0).choice(n, sample, replace=False)) if sample < n else slice(None)
    ivf.train(check_matrix(vecs[rows], ivf.d, "vectors"))


class VectorIndex:
    """One vector per non-negative int64 id; exact (flat) or approximate (IVF).

    ``VectorIndex(dim)`` is an empty exact index; use :meth:`build` for IVF, which
    needs the vectors up front to train its coarse quantizer. Not thread-safe.
    """

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim <= 0:
            raise InvalidRequestError(f"dim must be a positive integer, got {dim!r}")
        self._setup(faiss.IndexIDMap2(faiss.IndexFlatIP(int(dim))), "flat", set())

    # -- construction -----------------------------------------------------------------

    def _setup(self, index: faiss.Index, kind: str, ids: set[int]) -> None:
        self._index = index
        self._kind = kind
        self._ids = ids
        self.dim = int(index.d)

    @classmethod
    def build(
        cls,
        ids: Iterable[int] | np.ndarray,
        vectors: np.ndarray,
        kind: Kind = "auto",
        *,
        dim: int | None = None,
        nlist: int | None = None,
        nprobe: int = DEFAULT_NPROBE,
    ) -> "VectorIndex":
        """Index ``vectors`` (n, d) under ``ids`` (n,), choosing the layout by ``kind``.

        ``auto`` is exact below :data:`FLAT_MAX` vectors and IVF above: exact search
        is already fast at that size and never misses. IVF is trained on the given
        vectors, so later upserts should look like them; rebuild after large changes.
        """
        id_arr = _check_ids(ids)
        if dim is None:
            shape = np.shape(vectors)
            if len(shape) != 2 or shape[1] == 0:
                raise InvalidRequestError(f"vectors must be (n, d) to infer d, got shape {shape}")
            dim = int(shape[1])
        vecs = check_matrix(vectors, dim, "vectors")
        if vecs.shape[0] != id_arr.shape[0]:
            raise InvalidRequestError(
                f"{id_arr.shape[0]} ids but {vecs.shape[0]} vectors; they must pair up"
            )
        if np.unique(id_arr).shape[0] != id_arr.shape[0]:
            raise InvalidRequestError("ids must be unique: one vector per id")
        if kind not in ("auto", "flat", "ivf"):
            raise InvalidRequestError(f"kind must be 'auto', 'flat' or 'ivf', got {kind!r}")
        n = vecs.shape[0]
        if kind == "auto":
            kind = "ivf" if n >= FLAT_MAX else "flat"

        self = cls.__new__(cls)
        if kind == "flat":
            self._setup(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), "flat", set())
        else:
            if n == 0:
                raise InvalidRequestError("an IVF index needs vectors to train on; got none")
            lists = default_nlist(n) if nlist is None else int(nlist)
            if not 1 <= lists <= n:
                raise InvalidRequestError(f"nlist must be in [1, {n}], got {nlist}")
            quantizer = faiss.IndexFlatIP(dim)
            ivf = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
            train_ivf(ivf, vecs)
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            self._setup(ivf, "ivf", set())
            self.nprobe = nprobe
        if n:
            self._index.add_with_ids(vecs, id_arr)
            self._ids.update(id_arr.tolist())
        return self

    # -- properties -------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """``"flat"`` (exact) or ``"ivf"`` (approximate)."""
        return self._kind

    @property
    def nlist(self) -> int | None:
        """Number of IVF lists (None for flat)."""
        return int(self._index.nlist) if self._kind == "ivf" else None

    @property
    def nprobe(self) -> int | None:
        """Lists searched per query (IVF only; None for flat)."""
        return int(self._index.nprobe) if self._kind == "ivf" else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self._kind != "ivf":
            raise InvalidRequestError("nprobe only applies to IVF indexes")
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise InvalidRequestError(f"nprobe must be a positive integer, got {value!r}")
        self._index.nprobe = int(min(value, self._index.nlist))

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, id: object) -> bool:
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)):
            return False
        return int(id) in self._ids

    def ids(self) -> np.ndarray:
        """All ids present, sorted (int64)."""
        return np.array(sorted(self._ids), dtype=np.int64)

    # -- mutation ---------------------------------------------------------------------

    def upsert(self, id: int, vector: np.ndarray) -> None:
        """Set the vector of ``id``: remove the old one (if any), then add.

        Only this id's entry changes; every other stored vector keeps its exact bits.
        """
        key = _check_id(id)
        vec = check_matrix(vector, self.dim, "vector")
        if vec.shape[0] != 1:
            raise InvalidRequestError(f"upsert takes one vector, got {vec.shape[0]}")
        if key in self._ids:
            self._remove(key)
        self._index.add_with_ids(vec, np.array([key], dtype=np.int64))
        self._ids.add(key)

    def remove(self, id: int) -> None:
        """Delete ``id``'s vector; it stops matching immediately."""
        key = _check_id(id)
        if key not in self._ids:
            raise NotFoundError(f"id {key} is not in the index", id=key)
        self._remove(key)

    def _remove(self, key: int) -> None:
        arr = np.array([key], dtype=np.int64)
        # IVF with a hashtable direct map only accepts IDSelectorArray; flat takes any.
        removed = self._index.remove_ids(faiss.IDSelectorArray(1, faiss.swig_ptr(arr)))
        if removed != 1:  # pragma: no cover - would mean our id set and FAISS disagree
            raise RuntimeError(f"FAISS removed {removed} entries for id {key}, expected 1")
        self._ids.discard(key)

    # -- queries ----------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product for each row of ``queries`` (n, d) or (d,).

        Returns ``(cosines, ids)``, both (n, k), best first; slots with no result
        (fewer than k vectors, or IVF lists that came up short) have id -1 and
        cosine -inf, so they never pass a threshold.
        """
        q = check_matrix(queries, self.dim, "queries")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InvalidRequestError(f"k must be a positive integer, got {k!r}")
        n, k = q.shape[0], int(k)
        if n == 0 or not self._ids:
            return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        cos, ids = self._index.search(q, k)
        cos[ids < 0] = -np.inf
        return cos, ids

    def reconstruct(self, id: int) -> np.ndarray:
        """The stored vector of ``id`` (float32, (d,)), bit for bit."""
        key = _check_id(id)
        if key not in self._ids:
            raise NotFoundError(f"id {key} is not in the index", id=key)
        return self._index.reconstruct(key)

    # -- persistence ------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index atomically (temp file in the same directory, then rename)."""
        atomic_write(path, lambda tmp: faiss.write_index(self._index, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "VectorIndex":
        """Read an index written by :meth:`save`.

        A missing, truncated or foreign file raises GalleryError rather than a raw
        FAISS RuntimeError, because the index is part of a gallery.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise GalleryError(f"index file {path} does not exist", path=path)
        try:
            raw = faiss.read_index(path)
        except (RuntimeError, MemoryError, OSError) as exc:
            raise GalleryError(f"index file {path} is corrupt or unreadable: {_first_line(exc)}",
                               path=path) from None
        self = cls.__new__(cls)
        if isinstance(raw, faiss.IndexIDMap2):
            inner = faiss.downcast_index(raw.index)
            if not isinstance(inner, faiss.IndexFlat) or inner.metric_type != faiss.METRIC_INNER_PRODUCT:
                raise GalleryError(f"index file {path} is not an inner-product flat index", path=path)
            ids = faiss.vector_to_array(raw.id_map).astype(np.int64)
            self._setup(raw, "flat", set(ids.tolist()))
        elif isinstance(raw, faiss.IndexIVFFlat) and raw.metric_type == faiss.METRIC_INNER_PRODUCT:
            if raw.direct_map.type != faiss.DirectMap.Hashtable:
                raw.set_direct_map_type(faiss.DirectMap.Hashtable)
            ids = _ivf_ids(raw)
            self._setup(raw, "ivf", set(ids.tolist()))
        else:
            raise GalleryError(f"index file {path} holds an unsupported index type "
                               f"{type(raw).__name__}", path=path)
        if len(self._ids) != raw.ntotal:
            raise GalleryError(f"index file {path} holds duplicate ids", path=path)
        return self


def _ivf_ids(ivf: faiss.IndexIVF) -> np.ndarray:
    invlists = ivf.invlists
    chunks = [np.zeros(0, dtype=np.int64)]
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size:
            ptr = invlists.get_ids(list_no)
            chunks.append(faiss.rev_swig_ptr(ptr, size).astype(np.int64, copy=True))
            invlists.release_ids(list_no, ptr)
    return np.concatenate(chunks)


def _check_id(id: object) -> int:
    if isinstance(id, bool) or not isinstance(id, (int, np.integer)):
        raise InvalidRequestError(f"ids are integers, got {type(id).__name__}")
    key = int(id)
    if not 0 <= key < 2**63:
        raise InvalidRequestError(f"ids must be non-negative int64 (-1 means 'no result'), got {key}")
    return key


def _check_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise InvalidRequestError(f"ids must be a 1-d integer array, got {arr.dtype} {arr.shape}")
    if arr.min() < 0 or int(arr.max()) >= 2**63:
        raise InvalidRequestError("ids must be non-negative int64 (-1 means 'no result')")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
