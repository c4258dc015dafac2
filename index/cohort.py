"""The AS-norm cohort: which enrolled people it holds, and scores of faces against it.

The cohort is the ``size`` enrolled people whose person id has the smallest 64-bit FNV-1a hash.
Every server process picks the same people without talking to the others, and a new person
changes the cohort only if their hash is among the smallest. Below ``size`` people there is no
cohort, and decisions stay on the cosine (recognizer/score_norm.py says why and how it scores).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from recognizer.score_norm import as_norm, top_k_stats

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def id_hashes(person_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """64-bit FNV-1a of each id's bytes, vectorised over the ids (uint64, one per id).

    ``person_ids`` is a list of str or a fixed-width bytes array (a snapshot's ``pids.npy``):
    both give the same hash, because the zero bytes that pad a fixed width are skipped (ids
    never contain NUL)."""
    arr = np.asarray(person_ids)
    if arr.dtype.kind == "U":
        arr = np.char.encode(arr, "utf-8")
    if arr.size == 0:
        return np.zeros(0, np.uint64)
    width = arr.dtype.itemsize
    raw = np.frombuffer(np.ascontiguousarray(arr).tobytes(), np.uint8).reshape(len(arr), width)
    h = np.full(len(arr), _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for col in raw.T:
            mixed = (h ^ col.astype(np.uint64)) * _FNV_PRIME
            h = np.where(col != 0, mixed, h)
    return h


def pick_cohort(person_ids: Sequence[str], size: int) -> list[str]:
    """The ``size`` ids with the smallest :func:`id_hashes` (ties by id), in hash order; all of
    them if there are fewer. About 0.5 s for a million ids (person ids are ASCII)."""
    ids = list(dict.fromkeys(person_ids))
    if not ids or size < 1:
        return []
    hashes = id_hashes(np.array(ids, dtype=bytes))
    if len(ids) > size:  # the smallest ``size`` hashes, and every id tied with the largest of them
        cut = np.partition(hashes, size - 1)[size - 1]
        keep = np.flatnonzero(hashes <= cut)
    else:
        keep = np.arange(len(ids))
    order = sorted(keep.tolist(), key=lambda i: (int(hashes[i]), ids[i]))[:size]
    return [ids[i] for i in order]


class Cohort:
    """The cohort's unit vectors and ids, and the standardised scores of faces against it."""

    def __init__(self, person_ids: Sequence[str], vectors: np.ndarray, k: int) -> None:
        self.person_ids = list(person_ids)
        self.vectors = np.asarray(vectors, np.float32).reshape(len(self.person_ids), -1)
        self.k = int(k)
        self._columns = np.ascontiguousarray(self.vectors.T)  # faces @ columns: 2x faster than @ vectors.T
        self._row = {pid: r for r, pid in enumerate(self.person_ids)}
        if not 1 <= self.k < max(2, len(self.person_ids)):
            raise ValueError(f"a cohort of {len(self.person_ids)} people cannot give k={k} cosines per face")

    def __len__(self) -> int:
        return len(self.person_ids)

    def stats(self, faces: np.ndarray, leave_out: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sd) of each face's top-k cosines against the cohort, without the person named
        in ``leave_out`` for that face (the enrolled person it is being compared with)."""
        faces = np.asarray(faces, np.float32).reshape(len(leave_out), -1)
        return self._stats_of((faces @ self._columns).astype(np.float64), leave_out)

    def _stats_of(self, scores: np.ndarray, leave_out: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        for r, pid in enumerate(leave_out):
            column = self._row.get(pid) if pid is not None else None
            if column is not None:
                scores[r, column] = -np.inf
        return top_k_stats(scores, self.k)

    def scores(self, probe: np.ndarray, people: np.ndarray, person_ids: Sequence[str | None],
               cosines: np.ndarray) -> np.ndarray:
        """AS-norm scores of one probe against each of ``people`` (their vectors and ids), given
        the pairs' cosines."""
        n = len(person_ids)
        probe_row = np.asarray(probe, np.float32).reshape(1, -1) @ self._columns  # once, then one copy per match
        probe_stats = self._stats_of(np.repeat(probe_row.astype(np.float64), n, 0), person_ids)
        person_stats = self.stats(people, person_ids)
        return as_norm(np.asarray(cosines, np.float64), probe_stats, person_stats)
