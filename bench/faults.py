"""Fault scenarios against real processes: a worker killed with ``kill -9`` mid-job, and Redis
killed (SIGKILL) and restarted mid-job. For each: how long until the job runs again and until it
is finished, and how many images were lost or stored twice.

1. A private redis-server (AOF, fsync always, for the Redis scenario) and two
   ``python worker.py`` processes (``JOB_HEARTBEAT`` as given, default the service's 10 s).
2. One enrollment job of ``--images`` distinct photos (the astronaut of scikit-image, rescaled
   and re-brightened: new bytes, same face), ``ENROLL_EMBED_BATCH=--batch``.
3. Once the job has recorded its first chunk: SIGKILL the worker running it (or Redis, then start
   it again on the same port and directory after ``--down`` s).
4. Until the job is ``finished``: the time it is picked up again (a new ``started_at``) and
   finished; lost = images neither stored nor reported, duplicated = images stored twice or
   reported twice; for Redis, whether both worker processes are still alive.

    OMP_NUM_THREADS=1 python -m bench.faults --model runs/cpu/model.pt
"""
from __future__ import annotations

import io
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import redis
from PIL import Image

from . import common
from .service_stack import Stack


def face_photos(count: int) -> list[bytes]:
    """``count`` distinct JPEGs of one real face (every one is accepted for enrollment)."""
    from skimage import data

    base = Image.fromarray(data.astronaut()[10:330, 60:380])
    out = []
    for i in range(count):
        scale = 0.75 + 0.25 * (i % 11) / 10
        img = base.resize((round(base.width * scale), round(base.height * scale)), Image.BILINEAR)
        arr = np.clip(np.asarray(img, dtype=np.float32) * (0.85 + 0.3 * (i % 7) / 6), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=80 + i % 15)
        out.append(buf.getvalue())
    assert len(set(out)) == count
    return out


def submit(conn: redis.Redis, model: Path, images: list[bytes], batch: int) -> tuple[str, str]:
    """One enrollment job for a new person, enqueued as the server does; (job id, person id)."""
    from rq import Queue

    from service.config import load_config
    from service.jobs import JOB_SERIALIZER, enqueue_enrollment

    config = load_config({"ENROLL_EMBED_BATCH": batch}, environ={})
    store = _store(conn, model)
    person = store.create_person("Fault test").person_id
    queue = Queue(config.enroll_queue, connection=conn, serializer=JOB_SERIALIZER)
    job = enqueue_enrollment(queue, store, config, [(person, [(f"{i}.jpg", d) for i, d in enumerate(images)])])
    return job.id, person


def _store(conn: redis.Redis, model: Path):
    from recognizer.artifact import ModelArtifact

    from service.store import GalleryStore

    artifact = ModelArtifact.load(model)
    return GalleryStore(conn, artifact.version, artifact.embedding_size)


def _job(conn: redis.Redis, job_id: str):
    from rq.job import Job

    from service.jobs import JOB_SERIALIZER

    return Job.fetch(job_id, connection=conn, serializer=JOB_SERIALIZER)


def _wait(what: str, check, timeout: float, poll: float = 0.05) -> float:
    """Poll ``check()`` (Redis errors count as not yet) until true; returns the time it took."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except redis.RedisError:
            pass
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(poll)


def outcome(conn: redis.Redis, model: Path, job_id: str, person: str, total: int) -> dict[str, Any]:
    """Lost and duplicated images of a finished job, from the job's results and the store."""
    from service.jobs import job_view

    store = _store(conn, model)
    view = job_view(conn, store, job_id)
    indexes = Counter(r["index"] for r in view["results"])
    stored = [i["image_hash"] for i in store.person_images(person)]
    return {"status": view["status"], "summary": view["summary"], "results": len(view["results"]),
            "stored": len(stored),
            "lost": total - len(indexes),
            "duplicated": sum(n - 1 for n in indexes.values()) + (len(stored) - len(set(stored)))
            + view["summary"].get("duplicate", 0),
            "retries_left": view["retries_left"]}


def run_scenario(stack: Stack, kind: str, images: int = 40, batch: int = 4, heartbeat: int = 10,
                 down: float = 5.0, timeout: float = 300.0) -> dict[str, Any]:
    """``kind`` "worker" (kill -9 the worker running the job) or "redis" (kill and restart Redis);
    returns the timings and counts of the module docstring."""
    conn = stack.start_redis(persistent=(kind == "redis"))
    env = {"JOB_HEARTBEAT": str(heartbeat)}
    for name in ("w1", "w2"):
        stack.start_worker(name, **env)
    job_id, person = submit(conn, stack.model, face_photos(images), batch)
    _wait("first chunk recorded", lambda: _job(conn, job_id).meta.get("progress", {}).get("done", 0) >= 1,
          timeout)
    first = _job(conn, job_id)
    done_at_fault = first.meta["progress"]["done"]
    if done_at_fault >= images:
        raise RuntimeError("the job finished before the fault: use more --images")
    t_fault = time.monotonic()
    if kind == "worker":
        victim = stack.process(first.worker_name)
        os.kill(victim.pid, signal.SIGKILL)
    else:
        stack.kill_redis()
        time.sleep(down)
        conn = stack.start_redis(persistent=True)
    t_up = time.monotonic()
    started_again = _wait("job picked up again", lambda: (j := _job(conn, job_id)).started_at is not None
                          and j.started_at > first.started_at, timeout, poll=0.2) + (t_up - t_fault)
    _wait("job finished", lambda: _job(conn, job_id).get_status() == "finished", timeout, poll=0.2)
    finished = time.monotonic() - t_fault
    result = {"scenario": kind, "images": images, "batch": batch, "job_heartbeat_s": heartbeat,
              "done_at_fault": done_at_fault, "picked_up_again_s": round(started_again, 1),
              "finished_s": round(finished, 1), **outcome(conn, stack.model, job_id, person, images)}
    if kind == "redis":
        result["redis_down_s"] = down
        result["workers_alive"] = sum(stack.process(n).poll() is None for n in ("w1", "w2"))
        # ... and still working: a new job after the restart is done by them.
        job2, person2 = submit(conn, stack.model, face_photos(images)[:2], batch)
        result["new_job_after_restart_s"] = round(
            _wait("a new job after the restart", lambda: _job(conn, job2).get_status() == "finished", timeout), 1)
    return result


def main() -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=str(common.DEFAULT_MODEL))
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heartbeat", type=int, default=10, help="JOB_HEARTBEAT of the workers (s)")
    p.add_argument("--down", type=float, default=5.0, help="seconds Redis stays down")
    args = p.parse_args()
    start = time.perf_counter()
    rows = []
    for kind in ("worker", "redis"):
        with Stack(Path(args.model)) as stack:
            rows.append(run_scenario(stack, kind, args.images, args.batch, args.heartbeat, args.down))
        print(rows[-1], flush=True)
    header = ("scenario", "picked up again (s)", "finished (s)", "lost", "duplicated", "workers alive")
    table = common.markdown_table(header, [
        (r["scenario"], r["picked_up_again_s"], r["finished_s"], r["lost"], r["duplicated"],
         r.get("workers_alive", "-")) for r in rows])
    return common.finish("faults", args, {"rows": rows}, table, start)


if __name__ == "__main__":
    raise SystemExit(main())
