"""Re-embedding kept face crops with another model: what fills a new version's gallery.

Works through the version's todo set (:mod:`service.versions`): for a handful of people at a
time it reads their kept crops, embeds those the version lacks in one batched forward pass,
and stores them with a Lua script that skips photos deleted meanwhile and takes a person off
the set only when every photo of theirs is embedded. Photos enrolled while it runs by a
process without the new model put their person back on the set, so passes repeat until it is
empty (complete) or no pass makes progress (photos without a crop: they need re-enrollment).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from recognizer import Recognizer

from .crops import decode_frame
from .store import GalleryStore
from .versions import put_embeddings

log = logging.getLogger(__name__)


@dataclass
class ReembedReport:
    """What a re-embedding run did; ``stuck`` are people whose photos cannot be re-embedded."""

    people: int = 0
    photos: int = 0
    seconds: float = 0.0
    passes: int = 0
    stuck: list[str] = field(default_factory=list)

    @property
    def photos_per_second(self) -> float:
        return self.photos / self.seconds if self.seconds else 0.0


def _read_people(store: GalleryStore, version: str, pids: list[str], others: list[str]) -> list[tuple[str, list]]:
    """For each person: the kept crops this version lacks, with the info recorded at enrollment."""
    with store.redis.pipeline(transaction=False) as pipe:
        for pid in pids:
            pipe.hgetall(store.crop_key(pid))
            pipe.hkeys(store.emb_key_of(version, pid))
            for other in others:
                pipe.hgetall(store.info_key_of(other, pid))
        replies = pipe.execute()
    step = 2 + len(others)
    out = []
    for i, pid in enumerate(pids):
        crops, have = replies[i * step], set(replies[i * step + 1])
        infos: dict[bytes, bytes] = {}
        for raw in replies[i * step + 2:(i + 1) * step]:
            infos = {**raw, **infos}
        todo = [(h.decode(), data, infos.get(h)) for h, data in crops.items() if h not in have]
        out.append((pid, todo))
    return out


def _info(raw: bytes | None, version: str) -> dict[str, Any]:
    try:
        info = dict(json.loads(raw)) if raw else {}
    except ValueError:
        info = {}
    return {**info, "reembedded_at": round(time.time(), 3), "reembedded_for": version}


def reembed_pending(store: GalleryStore, recognizer: Recognizer, *, people_per_step: int = 32,
                    max_passes: int = 100, progress: bool = True) -> ReembedReport:
    """Embed every kept crop that ``recognizer``'s version lacks, until its todo set is empty
    or stops shrinking; returns what was done (``stuck``: people left on the set)."""
    version = recognizer.version
    report = ReembedReport()
    started = time.perf_counter()
    progressed = True
    while report.passes < max_passes:
        pending = sorted(m.decode() for m in store.redis.smembers(store.todo_key(version)))
        if not pending:
            break
        if not progressed:
            report.stuck = pending  # a whole pass moved nothing: photos without a usable crop
            break
        report.passes += 1
        others = [v.decode() for v in store.redis.smembers(store.versions_key) if v.decode() != version]
        progressed = False
        bar = tqdm(total=len(pending), unit="person", desc=f"re-embed {version} (pass {report.passes})",
                   disable=not progress, leave=False)
        for start in range(0, len(pending), people_per_step):
            people = _read_people(store, version, pending[start:start + people_per_step], others)
            faces = [(pid, h, decode_frame(data), info) for pid, todo in people for h, data, info in todo]
            bad = [(pid, h) for pid, h, frame, _ in faces if frame is None]
            for pid, h in bad:
                log.warning("person %s: kept crop of photo %s is not a readable frame; skipped", pid, h)
            faces = [f for f in faces if f[2] is not None]
            vectors = (recognizer.embed(recognizer.frames_to_input(np.stack([f[2] for f in faces])))
                       if faces else np.zeros((0, recognizer.dim), np.float32))
            by_person: dict[str, list] = {pid: [] for pid, _ in people}
            for (pid, h, _, info), vector in zip(faces, vectors):
                by_person[pid].append((h, vector, _info(info, version)))
            for pid, items in by_person.items():
                missing = put_embeddings(store, version, pid, items)
                progressed = progressed or missing <= 0 or bool(items)
            report.photos += len(faces)
            report.people += len(people)
            bar.update(len(people))
        bar.close()
    report.seconds = time.perf_counter() - started
    return report
