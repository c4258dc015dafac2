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

With a host snapshot (``GALLERY_SNAPSHOT_DIR``, service/snapshot.py) a rebuild maps the
snapshot instead of reading every person, and replays the stream after the snapshot's
marker; people changed since then live in the index's in-process overlay. Without one, or
when the snapshot cannot be followed up to now, the rebuild reads Redis as above.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Iterable

import numpy as np
import redis

from index import Match, SnapshotIndex, VectorIndex, cosine_to_angle_deg, mean_embedding
from index.cohort import Cohort, id_hashes, pick_cohort
from recognizer.errors import GalleryError, InvalidRequestError
from recognizer.score_norm import Calibration

from .errors import ServiceUnavailableError
from .snapshot import GallerySnapshot, open_current
from .store import GalleryStore, Marker

log = logging.getLogger(__name__)


class GalleryCache:
    """One mean vector per person (of the store's model version) in a FAISS index.

    Thread-safe: one lock guards the index and the bookkeeping, because ``VectorIndex``
    is not thread-safe and the server may run several request threads per process.
    """

    def __init__(self, store: GalleryStore, snapshot_dir: str | None = None, snapshot_nprobe: int | None = None,
                 score_norm: Calibration | None = None) -> None:
        self.store = store
        self.score_norm = score_norm  # None: no cohort is kept, decisions stay on the cosine
        self.snapshot_dir = snapshot_dir
        self.snapshot_nprobe = snapshot_nprobe  # None: the index's default
        self._lock = threading.RLock()
        self._index: VectorIndex | SnapshotIndex = VectorIndex(store.dim)
        self._snapshot: GallerySnapshot | None = None
        # People touched since the snapshot (all people without one): the snapshot's own
        # people are found through its mapped, sorted pids instead of per-process dicts.
        self._int_of: dict[str, int] = {}
        self._pid_of: dict[int, str] = {}
        self._names: dict[str, str] = {}
        self._next_int = 0
        self._marker = Marker(None, -1)  # never equal to a real marker: first sync rebuilds
        self._last_id = b"0-0"
        self.rebuilds = 0
        self.last_sync = 0.0
        self.source = "none"  # where the last rebuild came from: "snapshot" or "redis"
        # The AS-norm cohort (index/cohort.py), worked out again only after a change that can move it
        self._cohort: Cohort | None = None
        self._cohort_ids: set[str] = set()
        self._cohort_max_hash = 0
        self._cohort_stale = True
        self._snapshot_order: np.ndarray | None = None  # the snapshot's rows by id hash, once per snapshot

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
        if self.snapshot_dir and self._open_snapshot_locked():
            return
        marker, last_id = self.store.snapshot_marker()  # before reading: racing writes get replayed
        people = self.store.load_people(self.store.all_person_ids())
        self._reset(VectorIndex(self.store.dim), None)
        for pid, entry in people.items():
            if entry is not None:
                self._put(pid, *entry)
        self._marker, self._last_id = marker, last_id
        self.rebuilds += 1
        log.info("gallery cache rebuilt: %d people with vectors (gen %d)", len(self._index), marker.gen)

    def _open_snapshot_locked(self) -> bool:
        """Map the host's snapshot and replay the stream after it; False (and a log line saying
        why) when there is none or it cannot be brought up to now, so Redis is read instead."""
        try:
            snap = open_current(self.snapshot_dir, self.store.model_version)
        except GalleryError as exc:
            log.warning("gallery snapshot ignored: %s", exc.message)
            return False
        if snap is None:
            log.info("no gallery snapshot of %s under %s yet: reading Redis", self.store.model_version, self.snapshot_dir)
            return False
        current, _ = self.store.snapshot_marker()
        if current.epoch != snap.marker.epoch or current.gen < snap.marker.gen:
            log.warning("gallery snapshot %s is of another data set (epoch/gen): reading Redis", snap.path)
            return False
        changes, last_id, expected = [], snap.last_id, snap.marker.gen + 1
        while True:  # the whole stream after the snapshot, in pages
            page = self.store.changes_after(last_id)
            if not page:
                break
            if page[0].gen != expected:
                log.warning("gallery snapshot %s is older than the change stream keeps: reading Redis", snap.path)
                return False
            changes += page
            last_id, expected = page[-1].stream_id, page[-1].gen + 1
        if expected - 1 < current.gen:
            log.warning("gallery snapshot %s: the stream stops before gen %d: reading Redis", snap.path, current.gen)
            return False
        if self.snapshot_nprobe is not None:
            snap.index.nprobe = self.snapshot_nprobe
        self._reset(snap.index, snap)
        self._apply(c.person_id for c in changes)
        self._marker, self._last_id = Marker(current.epoch, expected - 1), last_id
        self.rebuilds += 1
        log.info("gallery snapshot %s mapped: %d people, %d changes replayed (gen %d)",
                 snap.path, len(self._index), len(changes), self._marker.gen)
        return True

    def _reset(self, index: VectorIndex | SnapshotIndex, snap: GallerySnapshot | None) -> None:
        """Start over on ``index``: empty, or a snapshot whose rows are ids 0..n-1."""
        self._index, self._snapshot = index, snap
        self.source = "redis" if snap is None else "snapshot"
        self._cohort_stale, self._snapshot_order = True, None
        self._int_of.clear()
        self._pid_of.clear()
        self._names.clear()
        self._next_int = 0 if snap is None else len(snap)

    def _int_id(self, pid: str) -> int | None:
        """The index id of ``pid``: assigned since the snapshot, else its snapshot row."""
        int_id = self._int_of.get(pid)
        if int_id is None and self._snapshot is not None:
            int_id = self._snapshot.row_of(pid)
        return int_id

    def _pid(self, int_id: int) -> str | None:
        pid = self._pid_of.get(int_id)
        if pid is None and self._snapshot is not None and 0 <= int_id < len(self._snapshot):
            pid = self._snapshot.pid_of(int_id)
        return pid

    def _apply(self, person_ids: Iterable[str]) -> None:
        pids = list(dict.fromkeys(person_ids))
        for pid, entry in self.store.load_people(pids).items():
            if entry is None:
                self._drop(pid)
            else:
                self._put(pid, *entry)

    def _put(self, pid: str, name: str, vectors: np.ndarray) -> None:
        self._touch_cohort(pid)
        if vectors.shape[0] == 0:
            self._drop(pid)
            return
        try:
            vector = mean_embedding(vectors)
        except InvalidRequestError as exc:  # e.g. embeddings that cancel out: not matchable
            log.warning("person %s has no usable mean vector: %s", pid, exc.message)
            self._drop(pid)
            return
        int_id = self._int_id(pid)
        if int_id is None:
            int_id = self._next_int
            self._next_int += 1
        self._int_of[pid] = int_id
        self._pid_of[int_id] = pid
        self._names[pid] = name
        self._index.upsert(int_id, vector)

    def _drop(self, pid: str) -> None:
        self._touch_cohort(pid)
        int_id = self._int_id(pid)
        self._int_of.pop(pid, None)
        self._names.pop(pid, None)
        if int_id is not None:
            self._pid_of.pop(int_id, None)
            if int_id in self._index:
                self._index.remove(int_id)

    # -- the AS-norm cohort ------------------------------------------------------------

    def _touch_cohort(self, pid: str) -> None:
        """``pid`` changed: the cohort needs working out again only if they are in it, or would be."""
        if self.score_norm is None or self._cohort_stale:
            return
        if (len(self._cohort_ids) < self.score_norm.cohort_size or pid in self._cohort_ids
                or int(id_hashes([pid])[0]) <= self._cohort_max_hash):
            self._cohort_stale = True

    def _cohort_locked(self) -> Cohort | None:
        """The cohort (the calibrated number of people with the smallest id hashes), or None when the
        gallery has fewer people or no calibration was given."""
        cal = self.score_norm
        if cal is None:
            return None
        if self._cohort_stale:
            ids = self._smallest_hashes(cal.cohort_size)
            self._cohort_ids = set(ids)
            self._cohort_max_hash = int(id_hashes(ids).max()) if ids else 0
            self._cohort = None
            if len(ids) == cal.cohort_size:
                vectors = np.stack([self._index.reconstruct(self._int_id(pid)) for pid in ids])
                self._cohort = Cohort(ids, vectors, cal.k)
            self._cohort_stale = False
        return self._cohort

    def _smallest_hashes(self, size: int) -> list[str]:
        """The ``size`` people in the index with the smallest id hashes. Without a snapshot every
        person is in ``_int_of``; with one, its rows are walked in hash order (sorted once per
        snapshot), skipping the removed and those changed since (they are in ``_int_of``)."""
        best = pick_cohort(list(self._int_of), size)
        if self._snapshot is not None:
            if self._snapshot_order is None:
                self._snapshot_order = np.argsort(id_hashes(self._snapshot.pids), kind="stable")
            extra: list[str] = []
            order = self._snapshot_order
            for start in range(0, len(order), 4 * size):  # a few hundred rows read, not a list of millions
                for row in order[start:start + 4 * size].tolist():
                    pid = self._snapshot.pid_of(row)
                    if pid not in self._int_of and row in self._index:
                        extra.append(pid)
                if len(extra) >= size:
                    break
            best = pick_cohort(best + extra, size)
        return best

    def cohort_status(self) -> dict:
        """How far the gallery is from a cohort: what /health and the console show."""
        with self._lock:
            if self.score_norm is None:
                return {"calibrated": False, "active": False}
            cohort = self._cohort_locked()
            return {"calibrated": True, "active": cohort is not None, "cohort_size": self.score_norm.cohort_size,
                    "people": len(self._index), "k": self.score_norm.k, "threshold": self.score_norm.threshold}

    # -- queries -----------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, sync: bool = True, score_norm: bool = False) -> list[list[Match]]:
        """Top-``k`` people for each query embedding (best first by cosine), after a freshness check.
        With ``score_norm`` and a cohort, each match also carries its AS-norm score."""
        with self._lock:
            if sync:
                self.sync()
            q = np.asarray(queries, dtype=np.float32).reshape(-1, self.store.dim)
            if q.shape[0] == 0 or len(self._index) == 0:
                return [[] for _ in range(q.shape[0])]
            cosines, ids = self._index.search(q, min(int(k), len(self._index)))
            found = [[(min(1.0, max(-1.0, float(cos))), self._pid(int_id), int_id)
                      for cos, int_id in zip(row_cos, row_ids) if int_id >= 0]
                     for row_cos, row_ids in zip(cosines.tolist(), ids.tolist())]
            names = self._names_of({pid for row in found for _, pid, _ in row if pid is not None})
            found = [[(cos, pid, int_id) for cos, pid, int_id in row if pid in names] for row in found]
            cohort = self._cohort_locked() if score_norm else None
            results = []
            for probe, row in zip(q, found):
                matches = [Match(pid, names[pid], cos, cosine_to_angle_deg(cos)) for cos, pid, _ in row]
                if cohort is not None and matches:
                    people = np.stack([self._index.reconstruct(int_id) for _, _, int_id in row])
                    scores = cohort.scores(probe, people, [m.person_id for m in matches], [m.cosine for m in matches])
                    matches = [dataclasses.replace(m, score=float(z)) for m, z in zip(matches, scores)]
                results.append(matches)
            return results

    def pair_score(self, first: np.ndarray, second: np.ndarray, cosine: float, person_id: str | None = None) -> float | None:
        """AS-norm score of two faces (``second`` may be an enrolled person's vector: ``person_id``
        is then left out of both cohorts), or None when there is no cohort (as of the last sync)."""
        with self._lock:
            cohort = self._cohort_locked()
            if cohort is None:
                return None
            return float(cohort.scores(first, np.asarray(second, np.float32).reshape(1, -1), [person_id],
                                       [cosine])[0])

    def _names_of(self, pids: set[str]) -> dict[str, str]:
        """Names of these people: kept for those loaded in this process, read from Redis for a
        snapshot's people (the snapshot holds no names; a search returns a handful)."""
        names = {pid: self._names[pid] for pid in pids if pid in self._names}
        missing = [pid for pid in pids if pid not in names]
        if missing:
            try:
                for pid, name in zip(missing, self.store.names(missing)):
                    if name is not None:
                        names[pid] = name
            except redis.RedisError as exc:
                raise ServiceUnavailableError(f"the gallery store (Redis) is unreachable: {exc}") from None
        return names

    def person_vector(self, person_id: str, sync: bool = True) -> np.ndarray | None:
        """The person's mean vector, or None if they have no images for this model."""
        with self._lock:
            if sync:
                self.sync()
            int_id = self._int_id(person_id)
            return None if int_id is None or int_id not in self._index else self._index.reconstruct(int_id)

    def __len__(self) -> int:
        """People with a vector (at least one image for this model version)."""
        with self._lock:
            return len(self._index)

    @property
    def gen(self) -> int:
        return self._marker.gen
