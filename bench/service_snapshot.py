"""The service's gallery cache at scale: read from Redis by every process, or one host snapshot.

In one run, on a private redis-server filled through ``GalleryStore`` (one 512-d vector per
person, seeded random unit vectors), ``--people`` people:

* ``python -m service.snapshot``'s work (``service.snapshot.write``): seconds;
* then ``--changes`` more writes (new people, and deletes of snapshot people), which every
  snapshot reader must replay;
* ``--processes`` fresh server-like processes per mode, all alive together, each building a
  ``GalleryCache`` (``rebuild()``: start-up) then answering the queries through ``search``
  (with its per-request freshness check). Memory from /proc/<pid>/smaps_rollup: private bytes
  are what each process alone costs; PSS splits the shared mapping between them.
* top-1 agreement of the snapshot processes with the Redis-built (exact) ones.

    OMP_NUM_THREADS=1 python -m bench.service_snapshot --people 200000
    OMP_NUM_THREADS=1 python -m bench.service_snapshot --quick
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from service import snapshot
from service.store import GalleryStore

from . import common
from .service_stack import Stack

DIM = 512
VERSION = "bench-model"
CHILD = r"""
import json, sys, time
import numpy as np, redis, faiss
from service.cache import GalleryCache
from service.store import GalleryStore
faiss.omp_set_num_threads(1)
url, version, dim, snap_dir, qpath = sys.argv[1:6]
store = GalleryStore(redis.Redis.from_url(url), version, int(dim))
start = time.perf_counter()
cache = GalleryCache(store, snap_dir or None)
cache.rebuild()
opened = time.perf_counter() - start
q = np.load(qpath)
top, times = [], []
for row in q:
    t = time.perf_counter()
    found = cache.search(row[None], k=5)[0]
    times.append(time.perf_counter() - t)
    top.append(found[0].person_id if found else None)
print(json.dumps({"start_s": opened, "source": cache.source, "people": len(cache), "top1": top,
                  "query_ms_p50": 1000 * float(np.median(times))}), flush=True)
sys.stdin.read()  # stay alive (and mapped) until every process has measured
"""


def fill(store: GalleryStore, people: int, rng: np.random.Generator, chunk: int = 500) -> tuple[list[str], np.ndarray]:
    """People with one vector each, written by the store's own methods on a pipeline (``chunk``
    people per round trip: one at a time, a million people would take most of an hour)."""
    vectors = rng.standard_normal((people, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pids = [f"p{i:08d}" for i in range(people)]
    for s in common.progress(range(0, people, chunk), f"people into Redis, {chunk} a round trip"):
        with store.redis.pipeline(transaction=False) as pipe:
            piped = GalleryStore(pipe, store.model_version, store.dim, prefix=store.prefix)
            for i in range(s, min(s + chunk, people)):
                piped.create_person(f"person {i}", person_id=pids[i])
                try:
                    piped.add_image(pids[i], f"{i:064x}", vectors[i], {})
                except (TypeError, ValueError):
                    pass  # queued on the pipeline: its reply is not there to unpack yet
            pipe.execute()
    return pids, vectors


def processes(url: str, snap_dir: str, queries: Path, count: int) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, url, VERSION, str(DIM), snap_dir, str(queries)],
                              cwd=common.ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(count)]
    try:
        out = [json.loads(p.stdout.readline()) for p in procs]
        for p, row in zip(procs, out):  # all alive: PSS divides the shared pages among them
            rollup = Path(f"/proc/{p.pid}/smaps_rollup").read_text().splitlines()[1:]
            mem = {line.split()[0][:-1]: int(line.split()[1]) * 1024 for line in rollup}
            row["private_bytes"] = mem["Private_Clean"] + mem["Private_Dirty"]
            row["pss_bytes"] = mem["Pss"]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=120)
    return out


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--people", type=int, default=200_000)
    ap.add_argument("--changes", type=int, default=2000, help="writes after the snapshot (1 in 10 a delete)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()
    if args.quick:
        args.people, args.changes, args.queries = 3000, 200, 50
    common.set_threads(args.threads)
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="service-snapshot-"))
    with Stack(model=Path("unused")) as stack:
        conn = stack.start_redis()
        store = GalleryStore(conn, VERSION, DIM)
        pids, vectors = fill(store, args.people, rng)
        meta = snapshot.write(store, work)
        for i in common.progress(range(args.changes), "changes after the snapshot"):
            if i % 10 == 0:
                store.delete_person(pids[i])
            else:
                pid = store.create_person(f"late {i}").person_id
                v = rng.standard_normal(DIM).astype(np.float32)
                store.add_image(pid, f"{args.people + i:064x}", v / np.linalg.norm(v), {})
        picks = rng.choice(np.arange(args.changes, args.people), args.queries, replace=False)
        noisy = vectors[picks] + 0.03 * rng.standard_normal((args.queries, DIM)).astype(np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        qfile = work / "queries.npy"
        np.save(qfile, noisy)
        modes = {"redis": processes(stack.redis_url, "", qfile, args.processes),
                 "snapshot": processes(stack.redis_url, str(work), qfile, args.processes)}
    truth = [pids[i] for i in picks]
    rows = []
    for mode, procs in modes.items():
        p = procs[0]
        rows.append([mode, p["source"], p["people"], " / ".join(f"{q['start_s']:.2f}" for q in procs),
                     " / ".join(f"{q['private_bytes'] / 2**20:.0f}" for q in procs),
                     " / ".join(f"{q['pss_bytes'] / 2**20:.0f}" for q in procs),
                     f"{p['query_ms_p50']:.3f}", f"{np.mean([a == b for a, b in zip(p['top1'], truth)]):.4f}",
                     f"{np.mean([a == b for a, b in zip(p['top1'], modes['redis'][0]['top1'])]):.4f}"])
    table = common.markdown_table(
        ["mode", "built from", "people", "start-up s (each process)", "private MiB (each)", "PSS MiB (each)",
         "search p50 ms", "top-1 = source person", "top-1 = Redis-built"], rows)
    text = (f"{args.people} people, {args.changes} changes after the snapshot; snapshot written in "
            f"{meta['seconds']:.1f} s ({sum(meta['index']['bytes'].values()) / 2**20:.0f} MiB of index files)\n\n"
            + table)
    common.finish("service_snapshot", args, {"people": args.people, "changes": args.changes, "snapshot": meta,
                                             "modes": {m: [{k: v for k, v in p.items() if k != "top1"} for p in ps]
                                                       for m, ps in modes.items()}}, text, start)


if __name__ == "__main__":
    main()
