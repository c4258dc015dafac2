"""Gallery at scale, issue 13: recall@1 >= 0.99 at <= 2 ms a query, one shared copy per host.

In one run, on the same people and queries as ``bench.gallery_scale`` (real embeddings plus
noise; queries moved by real within-person offsets), for each size:

* exact search (``VectorIndex`` flat): the ground truth, and its latency;
* today's path, ``VectorIndex`` IVF-Flat (built in every server process), at several nprobe;
* ``index.SnapshotIndex``: IVF with 8-bit codes whose best ``refine`` x k candidates are re-ranked
  by float16 vectors, written once (``build_snapshot``) and memory-mapped read-only; nprobe sweep;
* HNSW (``IndexHNSWFlat``, M=32) where the gallery is at most ``--hnsw-max`` people (its build
  is too slow for a million on 2 cores, and it cannot remove ids);
* sharing: ``--processes`` fresh Python processes each open the snapshot (start-up time) and
  answer queries; their memory is read from /proc/<pid>/smaps_rollup (RSS, PSS = shared pages
  split between the processes that map them, private = what each one alone costs), against the
  same processes each loading today's IVF-Flat file into its own memory.

    OMP_NUM_THREADS=1 python -m bench.gallery_snapshot --model /tmp/model.pt --sizes 1e6
    OMP_NUM_THREADS=1 python -m bench.gallery_snapshot --quick          # smoke run, synthetic vectors
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from index import SnapshotIndex, VectorIndex, build_snapshot

from . import common
from . import gallery_scale as gs

K = gs.K


def recall_and_latency(search, queries: np.ndarray, exact: np.ndarray, repeats: int) -> dict:
    """recall@1 against exact search over every query, latency of one query at a time."""
    _, got = search(queries, K)
    it = iter(range(10**9))
    times = common.time_calls(lambda: search(queries[next(it) % len(queries)][None], K), repeats, warmup=3)
    return {"recall_at_1": float(np.mean(got[:, 0] == exact[:, 0])), "single": common.stats(times)}


CHILD = r"""
import json, sys, time
import numpy as np, faiss
from index import SnapshotIndex
faiss.omp_set_num_threads(1)
kind, path, qpath = sys.argv[1:4]
start = time.perf_counter()
if kind == "snapshot":
    index = SnapshotIndex.open(path)
    index.nprobe, index.refine = int(sys.argv[4]), int(sys.argv[5])
else:
    index = faiss.read_index(path)
    index.nprobe = int(sys.argv[4])
opened = time.perf_counter() - start
q = np.load(qpath)
start = time.perf_counter()
for row in q:
    index.search(row[None], 5)
per_query = (time.perf_counter() - start) / len(q)
mem = {}
for line in open("/proc/self/smaps_rollup"):
    parts = line.split()
    if parts[0] in ("Rss:", "Pss:", "Private_Clean:", "Private_Dirty:", "Shared_Clean:", "Shared_Dirty:"):
        mem[parts[0][:-1]] = int(parts[1]) * 1024
print(json.dumps({"open_s": opened, "query_s": per_query, "mem": mem}), flush=True)
sys.stdin.read()  # stay alive (and mapped) until every process has measured
"""


def shared_processes(kind: str, path: str, queries: np.ndarray, nprobe: int, refine: int, processes: int) -> dict:
    """Start ``processes`` Pythons that each open ``path`` and answer the queries; report what
    each measured once all of them are up (PSS splits shared pages between live mappers)."""
    qfile = tempfile.NamedTemporaryFile(suffix=".npy", delete=False)
    np.save(qfile, queries)
    qfile.close()
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, kind, path, qfile.name, str(nprobe), str(refine)],
                              cwd=common.ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(processes)]
    try:
        first = [json.loads(p.stdout.readline()) for p in procs]
        mem = []
        for p in procs:  # re-read now that all are mapped: PSS divides the shared pages among them
            rollup = Path(f"/proc/{p.pid}/smaps_rollup").read_text().splitlines()
            mem.append({line.split()[0][:-1]: int(line.split()[1]) * 1024 for line in rollup[1:]
                        if line.split()[0][:-1] in ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean")})
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
        os.unlink(qfile.name)
    return {"open_s": [f["open_s"] for f in first], "query_s": [f["query_s"] for f in first], "mem": mem}


def python_baseline() -> int:
    """Private memory of a Python that imported faiss, numpy and index, and nothing else."""
    code = ("import faiss, numpy, index; "
            "print(sum(int(l.split()[1]) for l in open('/proc/self/smaps_rollup') "
            "if l.startswith(('Private_Clean', 'Private_Dirty'))) * 1024)")
    return int(subprocess.run([sys.executable, "-c", code], cwd=common.ROOT, capture_output=True, text=True,
                              check=True).stdout)


def hnsw_rows(people: np.ndarray, queries: np.ndarray, exact: np.ndarray, args: argparse.Namespace) -> list[dict]:
    faiss.omp_set_num_threads(args.build_threads)
    start = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(people.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 40
    hnsw.add(people)
    build = time.perf_counter() - start
    faiss.omp_set_num_threads(args.threads)
    rows = []
    for ef in args.ef:
        hnsw.hnsw.efSearch = ef
        rows.append({"index": f"HNSW32 efSearch={ef}", "build_s": build,
                     "bytes_per_person": len(faiss.serialize_index(hnsw)) / len(people),
                     **recall_and_latency(hnsw.search, queries, exact, args.single_repeats)})
    return rows


class AnonPeak:
    """Peak anonymous memory (``RssAnon``) of this process inside a ``with`` block, sampled every
    0.2 s. Unlike ``ru_maxrss`` it leaves out the pages of mapped files (a 19 GiB people map
    being read), which the kernel can drop at any time."""

    def __enter__(self) -> "AnonPeak":
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
            if self._stop.wait(0.2):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def exact_top_k(people: np.ndarray, queries: np.ndarray, chunk: int = 262_144) -> np.ndarray:
    """Exact top-K ids of every query, scanning ``people`` (a memory map larger than RAM) one
    chunk at a time: the ground truth where a flat index would not fit."""
    best_cos = np.full((len(queries), K), -np.inf, np.float32)
    best_ids = np.full((len(queries), K), -1, np.int64)
    for s in tqdm(range(0, len(people), chunk), desc="exact scan", unit="chunk"):
        block_cos, block_ids = faiss.knn(queries, np.ascontiguousarray(people[s:s + chunk]), K,
                                         metric=faiss.METRIC_INNER_PRODUCT)  # on faiss's threads
        cos = np.concatenate([best_cos, block_cos], 1)
        ids = np.concatenate([best_ids, np.where(block_ids >= 0, block_ids + s, -1)], 1)
        order = np.argsort(-cos, axis=1, kind="stable")[:, :K]
        best_cos, best_ids = np.take_along_axis(cos, order, 1), np.take_along_axis(ids, order, 1)
    return best_ids


def streamed_size(n: int, emb: np.ndarray, sibling_cos: float, offsets: tuple[np.ndarray, np.ndarray],
                  rng: np.random.Generator, work: Path, args: argparse.Namespace) -> dict:
    """A gallery whose float vectors do not fit in memory (10M people: 20 GB of float32).

    The people are drawn exactly as for the in-memory sizes but written to a float32 memory map
    on disk; the ground truth is a chunked exact scan; only the snapshot is built, streamed from
    that map. Today's layout (exact or IVF-Flat held in every server process) is not built: it
    needs 2,080 bytes a person in each process, 20.8 GB at 10M, which this host cannot hold once,
    let alone twice."""
    people_file = work / f"people-{n}.npy"
    start = time.perf_counter()
    people = np.lib.format.open_memmap(people_file, mode="w+", dtype=np.float32, shape=(n, gs.DIM))
    gs.fill_people(people, emb, sibling_cos, rng)
    people.flush()
    made_s = time.perf_counter() - start
    _, queries = gs.make_queries(people, args.queries, *offsets, rng)
    print(f"  {n:,}: people written ({made_s:.0f} s, {people_file.stat().st_size / 2**30:.1f} GiB)", flush=True)
    faiss.omp_set_num_threads(max(args.threads, os.cpu_count() or 1))
    start = time.perf_counter()
    exact = exact_top_k(people, queries)
    scan_s = time.perf_counter() - start
    print(f"  {n:,}: exact done ({scan_s:.0f} s for {len(queries)} queries)", flush=True)
    rows: list[dict] = [{"index": "exact (chunked scan of the memory map, every query at once)", "recall_at_1": 1.0,
                         "single": None, "scan_s_per_query": scan_s / len(queries), "build_s": 0.0,
                         "bytes_per_person": 2048 + 8}]
    snap_dir = work / f"snapshot-{n}"
    faiss.omp_set_num_threads(args.build_threads)
    with AnonPeak() as anon:
        meta = build_snapshot(snap_dir, np.arange(n, dtype=np.int64), people)
    faiss.omp_set_num_threads(args.threads)
    del people
    if not args.keep:
        people_file.unlink()
    print(f"  {n:,}: snapshot built ({meta['build_s']:.0f} s, peak anonymous memory {anon.peak / 2**30:.1f} GiB)",
          flush=True)
    rows.extend(snapshot_rows(snap_dir, meta, queries, exact, args))
    sharing = {"snapshot": shared_processes("snapshot", str(snap_dir), queries[: args.share_queries],
                                            args.share_nprobe, args.share_refine, args.processes)}
    if not args.keep:
        shutil.rmtree(snap_dir)
    return {"people": n, "rows": rows, "snapshot_meta": meta, "sharing": sharing, "streamed": True,
            "people_written_s": made_s, "build_peak_anon_bytes": anon.peak}


def snapshot_rows(snap_dir: Path, meta: dict, queries: np.ndarray, exact: np.ndarray,
                  args: argparse.Namespace) -> list[dict]:
    """The snapshot's recall@1 and one-query latency for every nprobe x refine asked for."""
    n = meta["count"]
    snap = SnapshotIndex.open(snap_dir)
    rows = []
    for nprobe in args.snap_nprobe:
        for refine in args.refine:
            snap.nprobe, snap.refine = nprobe, refine
            rows.append({"index": f"snapshot IVF-SQ8 nlist={meta['nlist']} nprobe={snap.nprobe} + float16 "
                                  f"re-rank of {refine * K}", "build_s": meta["build_s"],
                         "bytes_per_person": sum(meta["bytes"].values()) / n, "nprobe": snap.nprobe,
                         "refine": refine, **recall_and_latency(snap.search, queries, exact, args.single_repeats)})
    return rows


def run(args: argparse.Namespace) -> dict:
    common.set_threads(args.threads)
    rng = np.random.default_rng(0)
    real = None if args.synthetic else gs.real_embeddings(args)
    emb, labels, source = real if real is not None else gs.synthetic_embeddings(rng)
    st = gs.embedding_stats(emb, labels)
    sibling_cos = max(0.05, st["different_people_mean_vector_cos_p99"])
    offsets_a, offsets_delta = gs.within_person_offsets(emb, labels)
    print(f"vectors: {source}", flush=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gallery-snapshot-"))
    baseline = python_baseline()
    sizes = []
    for n in args.sizes:
        if n > args.in_memory_max:
            sizes.append(streamed_size(n, emb, sibling_cos, (offsets_a, offsets_delta), rng, work, args))
            continue
        people = gs.make_people(emb, n, sibling_cos, rng)
        _, queries = gs.make_queries(people, args.queries, offsets_a, offsets_delta, rng)
        ids = np.arange(n, dtype=np.int64)
        rows: list[dict] = []
        flat = VectorIndex.build(ids, people, kind="flat")
        faiss.omp_set_num_threads(max(args.threads, os.cpu_count() or 1))  # ground truth: all cores
        _, exact = flat.search(queries, K)
        faiss.omp_set_num_threads(args.threads)
        flat_times = common.time_calls(lambda: flat.search(queries[0], K), args.flat_repeats, warmup=1)
        rows.append({"index": "exact (flat)", "recall_at_1": 1.0, "single": common.stats(flat_times),
                     "build_s": 0.0, "bytes_per_person": 2048 + 8})
        del flat
        print(f"  {n:,}: exact done", flush=True)

        faiss.omp_set_num_threads(args.build_threads)
        start = time.perf_counter()
        ivf = VectorIndex.build(ids, people, kind="ivf")
        ivf_build = time.perf_counter() - start
        faiss.omp_set_num_threads(args.threads)
        ivf_file = work / f"ivf-{n}.faiss"
        ivf.save(ivf_file)
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            rows.append({"index": f"IVF-Flat nlist={ivf.nlist} nprobe={ivf.nprobe} (today)", "build_s": ivf_build,
                         "bytes_per_person": ivf_file.stat().st_size / n, "nprobe": ivf.nprobe,
                         **recall_and_latency(ivf.search, queries, exact, args.single_repeats)})
        del ivf
        print(f"  {n:,}: IVF-Flat done ({ivf_build:.0f} s build)", flush=True)

        snap_dir = work / f"snapshot-{n}"
        faiss.omp_set_num_threads(args.build_threads)
        meta = build_snapshot(snap_dir, ids, people)
        faiss.omp_set_num_threads(args.threads)
        rows.extend(snapshot_rows(snap_dir, meta, queries, exact, args))
        print(f"  {n:,}: snapshot done ({meta['build_s']:.0f} s build)", flush=True)
        if n <= args.hnsw_max:
            rows.extend(hnsw_rows(people, queries, exact, args))
            print(f"  {n:,}: HNSW done", flush=True)
        del people

        share_q = queries[: args.share_queries]
        sharing = {
            "snapshot": shared_processes("snapshot", str(snap_dir), share_q, args.share_nprobe, args.share_refine,
                                         args.processes),
            "today": shared_processes("ivf", str(ivf_file), share_q, args.share_today_nprobe, 0, args.processes),
        }
        sizes.append({"people": n, "rows": rows, "snapshot_meta": meta, "sharing": sharing})
        if not args.keep:
            ivf_file.unlink()
            for f in snap_dir.iterdir():
                f.unlink()
            snap_dir.rmdir()
    return {"source": source, "k": K, "threads": args.threads, "python_baseline_private": baseline,
            "sizes": sizes, "processes": args.processes}


def tables(result: dict) -> str:
    out = []
    for size in result["sizes"]:
        n = size["people"]
        first = size["rows"][0]
        exact = first["single"]["median"] if first["single"] else None  # a batched scan is no one-query time
        body = [[r["index"], common.num(r["recall_at_1"]),
                 common.ms(r["single"]["median"]) if r["single"] else f"({common.ms(r['scan_s_per_query'])} a query)",
                 common.ms(r["single"]["p95"]) if r["single"] else "",
                 common.ratio(exact, r["single"]["median"]) if r["single"] and exact else "",
                 f"{r['build_s']:.1f}", f"{r['bytes_per_person']:.0f}"] for r in size["rows"]]
        out.append(f"#### {n:,} people: recall@1 against exact search, one query at a time\n\n" + common.markdown_table(
            ["index", "recall@1", "ms (median)", "p95", "speed-up vs exact", "build s", "bytes/person (files)"],
            body, align="lrrrrrr"))
        srows = []
        for name, s in size["sharing"].items():
            for i, mem in enumerate(s["mem"]):
                private = mem["Private_Clean"] + mem["Private_Dirty"] - result["python_baseline_private"]
                srows.append([name, i + 1, f"{s['open_s'][i] * 1e3:.1f}", common.ms(s["query_s"][i]),
                              f"{mem['Rss'] / 2**20:.0f}", f"{mem['Pss'] / 2**20:.0f}", f"{private / 2**20:.0f}",
                              f"{private / n:.0f}"])
        out.append(f"#### {n:,} people: {result['processes']} processes open the same index file\n\n"
                   + common.markdown_table(["index", "process", "start-up ms", "ms per query", "RSS MB", "PSS MB",
                                            "private MB (over a bare Python)", "private bytes/person"], srows,
                                           align="lrrrrrrr"))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--model", default=None, help="model artifact (without it: synthetic vectors)")
    p.add_argument("--splits", default=None, help="the run's splits.json (default: next to --model)")
    p.add_argument("--synthetic", action="store_true", help="clustered synthetic vectors even with a model")
    p.add_argument("--sizes", default=None, help="comma-separated gallery sizes (default 1e6; quick 2e4)")
    p.add_argument("--nprobe", default="32,64,128,256", help="today's IVF-Flat nprobe values")
    p.add_argument("--snap-nprobe", default="32,64,128,256", help="snapshot nprobe values")
    p.add_argument("--refine", default="8", help="snapshot re-ranking factors (candidates = refine x k)")
    p.add_argument("--ef", default="64,128", help="HNSW efSearch values")
    p.add_argument("--build-threads", type=int, default=os.cpu_count() or 1,
                   help="faiss threads while building (queries use --threads)")
    p.add_argument("--hnsw-max", type=float, default=1e5, help="build HNSW only up to this many people")
    p.add_argument("--processes", type=int, default=2, help="server processes sharing one host")
    p.add_argument("--share-nprobe", type=int, default=64)
    p.add_argument("--share-refine", type=int, default=8)
    p.add_argument("--share-today-nprobe", type=int, default=32, help="today's product default")
    p.add_argument("--workdir", default=None, help="where index files go (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the index files")
    p.add_argument("--in-memory-max", type=float, default=2e6,
                   help="above this many people the vectors live in a memory map on disk and only the "
                        "snapshot is built (10M x 512 float32 = 20 GB)")
    args = p.parse_args(argv)
    args.sizes = [int(float(s)) for s in (args.sizes or ("2e4" if args.quick else "1e6")).split(",")]
    args.nprobe = [int(s) for s in args.nprobe.split(",")]
    args.snap_nprobe = [int(s) for s in args.snap_nprobe.split(",")]
    args.refine = [int(s) for s in args.refine.split(",")]
    args.ef = [int(s) for s in args.ef.split(",")]
    args.identities, args.per_identity = (20, 10) if args.quick else (50, 40)
    args.queries = 256 if args.quick else 1024
    args.single_repeats = 50 if args.quick else 200
    args.flat_repeats = 5 if args.quick else 20
    args.share_queries = 50 if args.quick else 200
    start = time.perf_counter()
    result = run(args)
    text = f"{tables(result)}\n\nvectors: {result['source']}"
    return common.finish("gallery_snapshot", args, result, text, start, [])


if __name__ == "__main__":
    raise SystemExit(main())
