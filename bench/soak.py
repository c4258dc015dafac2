"""Soak: the whole stack (Redis, gunicorn behind nginx, an RQ worker, keys on) under 4 clients
mixing identify and enroll for a fixed time; counts every answer by class and reports the server
processes' memory at start and end, and whether every enrollment job ended.

Unpaced clients send the next request as soon as an answer comes, 429s included: that measures
the limits. ``--paced`` clients behave as the API asks: after a 429 they wait its Retry-After,
and each keeps at most one enrollment job in flight (while it is queued or running, the client
identifies instead), as a bulk importer that follows its jobs would; the queue should drain.

    .venv/bin/python -m bench.soak --seconds 600 --clients 4 [--paced]   # loopback only; stops by itself
"""
from __future__ import annotations

import argparse
import random
import threading
import time
from collections import Counter
from pathlib import Path

import requests

from recognizer.artifact import default_model_path

from . import common
from .service_stack import Stack, celeba_identities, jpeg_fit

ADMIN, READ = "soak-admin-key", "soak-read-key"


def rss_mb(root_pid: int) -> dict[int, float]:
    """Resident memory (MB) of a process and its children, from /proc."""
    pids = [root_pid] + [int(p) for p in Path(f"/proc/{root_pid}/task/{root_pid}/children").read_text().split()]
    out = {}
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out[pid] = int(line.split()[1]) / 1024
    return out


def job_pending(s: requests.Session, base: str, job: str | None) -> bool:
    """True while ``job`` is queued or running (or its status could not be read: ask later)."""
    if job is None:
        return False
    r = s.get(f"{base}/v1/jobs/{job}", headers={"X-API-Key": READ}, timeout=60)
    return r.status_code != 200 or r.json().get("status") in ("queued", "started", "deferred", "scheduled")


def client(base: str, photos: list[bytes], seconds: float, seed: int, counts: Counter, jobs: list[str],
           lock: threading.Lock, paced: bool = False) -> None:
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    my_job: str | None = None
    with requests.Session() as s:
        n = 0
        while time.monotonic() < end:
            n += 1
            try:
                enroll = rng.random() >= 0.8
                if enroll and paced and job_pending(s, base, my_job):
                    enroll = False  # one job of ours in flight at a time
                if not enroll:
                    r = s.post(f"{base}/v1/identify", files={"image": rng.choice(photos)},
                               headers={"X-API-Key": READ}, timeout=60)
                    kind = "identify"
                else:
                    files = [("images", p) for p in rng.sample(photos, 2)]
                    r = s.post(f"{base}/v1/enroll", data={"name": f"soak {seed}-{n}"}, files=files,
                               headers={"X-API-Key": ADMIN}, timeout=60)
                    kind = "enroll"
                    if r.status_code == 202:
                        my_job = r.json()["job_id"]
                        with lock:
                            jobs.append(my_job)
                with lock:
                    counts[f"{kind} {r.status_code // 100}xx" if r.status_code != 429 else f"{kind} 429"] += 1
                if paced and r.status_code == 429:
                    time.sleep(min(float(r.headers.get("Retry-After", 1)), max(0.0, end - time.monotonic())))
            except requests.RequestException as exc:
                with lock:
                    counts[f"error {type(exc).__name__}"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--celeba", default="../shared/data/celeba1k")
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--paced", action="store_true", help="clients honour Retry-After, one enroll job each in flight")
    parser.add_argument("--quick", action="store_true", help="30 s instead of --seconds (a smoke run)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/soak.json)")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 30
    groups = list(celeba_identities(Path(args.celeba)).values())
    photos = [jpeg_fit(p, 400) for g in groups[: args.photos] for p in g[:1]]
    started = time.time()
    with Stack(default_model_path()) as stack:
        stack.start_redis()
        keys = {"ADMIN_API_KEYS": ADMIN, "READ_API_KEYS": READ}
        gunicorn = stack.start_gunicorn(2, 1, **keys)
        base = stack.start_nginx(gunicorn)
        stack.start_worker("soak-w1", **keys)
        gpid = stack.process("gunicorn").pid
        before = rss_mb(gpid)
        counts: Counter = Counter()
        jobs: list[str] = []
        lock = threading.Lock()
        threads = [threading.Thread(target=client, args=(base, photos, args.seconds, i, counts, jobs, lock, args.paced))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = rss_mb(gpid)
        statuses: Counter = Counter()
        deadline = time.monotonic() + 300
        pending = list(jobs)
        while pending and time.monotonic() < deadline:
            still = []
            for job in pending:
                r = requests.get(f"{base}/v1/jobs/{job}", headers={"X-API-Key": READ}, timeout=30)
                if r.status_code == 429:  # polling is rate-limited like any client: wait and ask again
                    time.sleep(float(r.headers.get("Retry-After", 1)))
                    still.append(job)
                    continue
                status = r.json().get("status", f"HTTP {r.status_code}")
                (still.append(job) if status in ("queued", "started", "deferred", "scheduled") else
                 statuses.update([status]))
            pending = still
            time.sleep(1 if pending else 0)
        statuses["not finished after 5 min"] = len(pending)
    rows = [(k, v) for k, v in sorted(counts.items())] + [(f"jobs {k}", v) for k, v in sorted(statuses.items())]
    table = common.markdown_table(("what", "count"), rows)
    mem = common.markdown_table(("process", "RSS start (MB)", "RSS end (MB)"),
                                [(str(pid), f"{before.get(pid, float('nan')):.0f}", f"{after.get(pid, float('nan')):.0f}")
                                 for pid in sorted(set(before) | set(after))])
    print(f"soak: {args.clients} {'paced' if args.paced else 'unpaced'} clients, {args.seconds:.0f} s, "
          f"80% identify / 20% enroll of 2 photos\n{table}\n\n{mem}")
    common.write_json("soak-paced" if args.paced else "soak", args, {"paced": args.paced,"counts": dict(counts), "jobs": dict(statuses),
                               "rss_start_mb": before, "rss_end_mb": after, "seconds": time.time() - started})


if __name__ == "__main__":
    main()
