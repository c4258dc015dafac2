"""One gallery index per host: a snapshot of the Redis gallery that every server process maps.

Why: without it each server process reads every person from Redis at start-up and holds its own
exact index (2.1 GB and minutes at a million people; docs/BENCHMARKS.md). With
``GALLERY_SNAPSHOT_DIR`` set, a host-level job (``python -m service.snapshot``, e.g. hourly from
cron) writes the gallery of each model version as an ``index.snapshot`` directory; each process
maps it read-only (the page cache holds one copy for all of them) and replays only the change
stream after the marker the snapshot was taken at. Redis stays the source of truth: a snapshot
of another data set (epoch), or one whose changes were trimmed from the stream, is ignored and
the process rebuilds from Redis as before.

Layout under ``<dir>/<model version>/``: ``CURRENT`` names the newest build, a subdirectory
holding the index files (:func:`index.build_snapshot`, ids = rows), ``pids.npy`` (each row's
person id, sorted, so a person's row is a binary search on the mapping) and ``gallery.json``
(marker, count). A build is complete before ``CURRENT`` is switched to it (atomic replace), so
a reader sees the old build or the new one. Names are not in the snapshot: a search reads the
names of the people it returns from Redis.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index import SnapshotIndex, build_snapshot, mean_embedding
from recognizer.atomic import atomic_write_bytes
from recognizer.errors import GalleryError, InvalidRequestError

from .store import GalleryStore, Marker

log = logging.getLogger(__name__)
FORMAT = "face-gallery-redis-snapshot"
KEEP_BUILDS = 2  # the current build and the one before it (a process may still map it)


@dataclass
class GallerySnapshot:
    """A mapped snapshot: the index, each row's person id and the Redis marker it was taken at."""

    index: SnapshotIndex
    pids: np.ndarray  # (n,) bytes, sorted; row r is person pids[r]
    marker: Marker
    last_id: bytes
    path: Path

    def row_of(self, pid: str) -> int | None:
        """The snapshot row of ``pid`` (whether or not it was removed since), or None."""
        key = pid.encode()
        row = int(np.searchsorted(self.pids, key))
        return row if row < len(self.pids) and self.pids[row] == key else None

    def pid_of(self, row: int) -> str:
        return bytes(self.pids[row]).decode()

    def __len__(self) -> int:
        return len(self.pids)


def version_dir(root: str | os.PathLike[str], version: str) -> Path:
    return Path(root) / version


def write(store: GalleryStore, root: str | os.PathLike[str], *, nlist: int | None = None) -> dict:
    """Snapshot ``store``'s gallery (one mean vector per person) under ``root``; returns its metadata.

    The marker is read before the people, as a full cache rebuild does, so a write racing with
    the build is in the stream after it and gets replayed by every reader."""
    start = time.perf_counter()
    marker, last_id = store.snapshot_marker()
    pids = sorted(store.all_person_ids())
    target = version_dir(root, store.model_version)
    now = time.time_ns()  # names sort by creation time: pruning keeps the newest
    build = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now // 10**9))}.{now % 10**9:09d}-{uuid.uuid4().hex[:6]}"
    (target / build).mkdir(parents=True)
    scratch_path = target / build / ".vectors-f32.npy"
    scratch = None
    try:
        # the mean vectors go to a scratch map beside the build, not a list in memory: at 10M
        # people they are 20 GB of float32, more than the host's RAM (build_snapshot streams them)
        scratch = np.lib.format.open_memmap(scratch_path, mode="w+", dtype=np.float32,
                                            shape=(max(1, len(pids)), store.dim))
        rows: list[bytes] = []
        for s in range(0, len(pids), 5000):
            for pid, entry in store.load_people(pids[s:s + 5000]).items():
                if entry is None or entry[1].shape[0] == 0:
                    continue
                try:
                    scratch[len(rows)] = mean_embedding(entry[1])
                except InvalidRequestError:
                    continue  # no usable mean vector: the cache leaves such people out too
                rows.append(pid.encode())
        if not rows:
            raise GalleryError(f"model {store.model_version}: no person has a vector yet; nothing to snapshot")
        meta = build_snapshot(target / build, np.arange(len(rows)), scratch[:len(rows)], nlist=nlist)
    except BaseException:
        shutil.rmtree(target / build, ignore_errors=True)
        raise
    finally:
        scratch = None  # unmapped before the file goes
        scratch_path.unlink(missing_ok=True)
    np.save(target / build / "pids.npy", np.array(rows, dtype=f"S{max(map(len, rows))}"), allow_pickle=False)
    info = {"format": FORMAT, "version": store.model_version, "count": len(rows), "gen": marker.gen,
            "epoch": (marker.epoch or b"").decode(), "last_id": last_id.decode(),
            "index": meta, "seconds": round(time.perf_counter() - start, 3)}
    atomic_write_bytes(target / build / "gallery.json", json.dumps(info, indent=1).encode())
    atomic_write_bytes(target / "CURRENT", build.encode())
    _prune(target, keep=build)
    return {**info, "path": str(target / build)}


def _prune(target: Path, keep: str) -> None:
    builds = sorted((p for p in target.iterdir() if p.is_dir() and p.name != keep), key=lambda p: p.name)
    for old in builds[:max(0, len(builds) - (KEEP_BUILDS - 1))]:
        shutil.rmtree(old, ignore_errors=True)  # a process mapping it keeps its pages until it closes them


def open_current(root: str | os.PathLike[str], version: str) -> GallerySnapshot | None:
    """The newest snapshot of ``version`` under ``root``; None if there is none. GalleryError if
    it is unreadable (a reader falls back to Redis then)."""
    target = version_dir(root, version)
    try:
        build = (target / "CURRENT").read_text().strip()
    except FileNotFoundError:
        return None
    path = target / build
    try:
        info = json.loads((path / "gallery.json").read_text())
        pids = np.asarray(np.load(path / "pids.npy", mmap_mode="r", allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise GalleryError(f"gallery snapshot at {path} is unreadable: {exc}", path=str(path)) from None
    index = SnapshotIndex.open(path)
    if info.get("format") != FORMAT or info.get("version") != version or len(pids) != len(index):
        raise GalleryError(f"gallery snapshot at {path} does not belong to model {version}", path=str(path))
    return GallerySnapshot(index, pids, Marker(info["epoch"].encode(), int(info["gen"])),
                           info["last_id"].encode(), path)


def main(argv: list[str] | None = None) -> None:
    """``python -m service.snapshot``: snapshot every served model's gallery into GALLERY_SNAPSHOT_DIR."""
    from .app import connect_redis
    from .models import build_models
    from .config import load_config

    parser = argparse.ArgumentParser(prog="python -m service.snapshot", description=main.__doc__)
    parser.add_argument("--dir", help="snapshot root (default: GALLERY_SNAPSHOT_DIR)")
    parser.add_argument("--nlist", type=int, help="inverted lists (default: about sqrt(people) x 4)")
    args = parser.parse_args(argv)
    cfg = load_config()
    root = args.dir or cfg.gallery_snapshot_dir
    if not root:
        raise SystemExit("set GALLERY_SNAPSHOT_DIR or pass --dir")
    conn = connect_redis(cfg)
    for model in build_models(cfg):
        store = GalleryStore(conn, model.version, model.dim, prefix=cfg.redis_key_prefix,
                             stream_maxlen=cfg.change_stream_maxlen)
        try:
            print(json.dumps(write(store, root, nlist=args.nlist)))
        except GalleryError as exc:
            print(json.dumps({"version": model.version, "skipped": exc.message}))


if __name__ == "__main__":
    main()
