"""The per-process FAISS index: a cache of the Redis gallery that follows its change stream.

Built in full at start-up; afterwards :meth:`GalleryCache.sync` costs one ``MGET`` of
(epoch, gen) when nothing changed. When the counter moved, only the people named by the
new change-stream entries are re-read and their mean vectors replaced, so an enrollment
finished by any worker is visible on the next request of every server process, and a
delete is never answered from the cache once it has returned (the deleting process syncs
before responding; every other process syncs before answering).

A full rebuild happens when the change stream cannot tell what changed: another epoch
(the Redis data set was flushed or replaced), a counter that went backwards (a restore),
or entries trimmed from the stream before this process read them.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Iterable

import numpy as np
import redis

from index import Match, VectorIndex, cosine_to_angle_deg, mean_embedding
from recognizer.errors import InvalidRequestError

from .errors import ServiceUnavailableError
from .store import GalleryStore, Marker

log = logging.getLogger(__name__)


class GalleryCache:
    """One mean vector per person (of the store's model version) in a FAISS index.

    Thread-safe: one lock guards the index and the bookkeeping, because ``VectorIndex``
    is not thread-safe and the server may run several request threads per process.
    """

    def __init__(self, store: GalleryStore) -> None:
        self.store = store
        self._lock = threading.RLock()
        self._index = VectorIndex(store.dim)
        self._int_of: dict[str, int] = {}
        self._pid_of: dict[int, str] = {}
        self._names: dict[str, str] = {}
        self._next_int = 0
        self._marker = Marker(None, -1)  # never equal to a real marker: first sync rebuilds
        self._last_id = b"0-0"
        self.rebuilds = 0
        self.last_sync = 0.0

    # -- following Redis ---------------------------------------------------------------

    def sync(self) -> None:
        """Bring the index up to date with Redis; ServiceUnavailableError if Redis is down."""
        with self._lock:
            try:
                self._sync_locked()
            except redis.RedisError as exc:
                raise ServiceUnavailableError(f"the gallery store (Redis) is unreachable: {exc}") from None
            self.last_sync = time.time()

    def _sync_locked(self) -> None:
        current = self.store.marker()
        if current == self._marker:
            return
        if current.epoch != self._marker.epoch or current.gen < self._marker.gen:
            self._rebuild_locked()
            return
        changes = self.store.changes_after(self._last_id)
        expected = self._marker.gen + 1
        if not changes or changes[0].gen != expected:
            # The entries we need were trimmed (or the stream was replaced): start over.
            self._rebuild_locked()
            return
        self._apply(c.person_id for c in changes)
        self._last_id = changes[-1].stream_id
        self._marker = Marker(current.epoch, max(current.gen, changes[-1].gen))

    def rebuild(self) -> None:
        """Reload every person from Redis (start-up, or when the stream cannot be followed)."""
        with self._lock:
            try:
                self._rebuild_locked()
            except redis.RedisError as exc:
                raise ServiceUnavailableError(f"the gallery store (Redis) is unreachable: {exc}") from None

    def _rebuild_locked(self) -> None:
        marker, last_id = self.store.snapshot_marker()  # before reading: racing writes get replayed
        people = self.store.load_people(self.store.all_person_ids())
        self._index = VectorIndex(self.store.dim)
        self._int_of.clear()
        self._pid_of.clear()
        self._names.clear()
        for pid, entry in people.items():
            if entry is not None:
                self._put(pid, *entry)
        self._marker, self._last_id = marker, last_id
        self.rebuilds += 1
        log.info("gallery cache rebuilt: %d people with vectors (gen %d)", len(self._index), marker.gen)

    def _apply(self, person_ids: Iterable[str]) -> None:
        pids = list(dict.fromkeys(person_ids))
        for pid, entry in self.store.load_people(pids).items():
            if entry is None:
                self._drop(pid)
            else:
                self._put(pid, *entry)

    def _put(self, pid: str, name: str, vectors: np.ndarray) -> None:
        if vectors.shape[0] == 0:
            self._drop(pid)
            return
        try:
            vector = mean_embedding(vectors)
        except InvalidRequestError as exc:  # e.g. embeddings that cancel out: not matchable
            log.warning("person %s has no usable mean vector: %s", pid, exc.message)
            self._drop(pid)
            return
        int_id = self._int_of.get(pid)
        if int_id is None:
            int_id = self._next_int
            self._next_int += 1
            self._int_of[pid] = int_id
            self._pid_of[int_id] = pid
        self._names[pid] = name
        self._index.upsert(int_id, vector)

    def _drop(self, pid: str) -> None:
        int_id = self._int_of.pop(pid, None)
        self._names.pop(pid, None)
        if int_id is not None:
            self._pid_of.pop(int_id, None)
            if int_id in self._index:
                self._index.remove(int_id)

    # -- queries -----------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, sync: bool = True) -> list[list[Match]]:
        """Top-``k`` people for each query embedding (best first), after a freshness check."""
        with self._lock:
            if sync:
                self.sync()
            q = np.asarray(queries, dtype=np.float32).reshape(-1, self.store.dim)
            if q.shape[0] == 0 or len(self._index) == 0:
                return [[] for _ in range(q.shape[0])]
            cosines, ids = self._index.search(q, min(int(k), len(self._index)))
            results: list[list[Match]] = []
            for row_cos, row_ids in zip(cosines.tolist(), ids.tolist()):
                matches = []
                for cos, int_id in zip(row_cos, row_ids):
                    pid = self._pid_of.get(int_id)
                    if int_id < 0 or pid is None:
                        continue
                    cos = min(1.0, max(-1.0, float(cos)))
                    matches.append(Match(pid, self._names[pid], cos, cosine_to_angle_deg(cos)))
                results.append(matches)
            return results

    def person_vector(self, person_id: str, sync: bool = True) -> np.ndarray | None:
        """The person's mean vector, or None if they have no images for this model."""
        with self._lock:
            if sync:
                self.sync()
            int_id = self._int_of.get(person_id)
            return None if int_id is None else self._index.reconstruct(int_id)

    def __len__(self) -> int:
        """People with a vector (at least one image for this model version)."""
        with self._lock:
            return len(self._index)

    @property
    def gen(self) -> int:
        return self._marker.gen
