"""Enrollment through the queue, end to end, against the model's own batched throughput.

Why: bulk enrollment (``POST /v1/enroll`` -> RQ job -> ``worker.py``) parks every upload in Redis,
and a worker detects each image, embeds the accepted faces ``ENROLL_EMBED_BATCH`` (16) at a time
and writes to Redis in between; this measures what that costs against the best the model can do
on the same images, and whether a second worker helps.

1. A private redis-server, gunicorn (``gunicorn.conf.py``) and ``python worker.py`` processes
   (``TORCH_THREADS=1`` each), all on loopback.
2. In-process first (before any worker loads a model), with one torch thread: the same CelebA
   images decoded, detected (largest face), aligned and embedded in batches of ``--batch``
   (images/s per batch: median, p95), and one image at a time (``embed_for_enrollment``, what
   the synchronous ``POST /v1/people/<id>/images`` runs), to show what batching is worth.
3. With 1, then 2 workers: the images are posted as one ``POST /v1/enroll`` per person (a new
   person per CelebA identity, at most ``--per-job`` images each) and timed from the first
   submit to the last job's ``ended_at``: images/s, and the ratio to the in-process numbers.

    OMP_NUM_THREADS=1 python -m bench.enroll_queue --quick --model /tmp/model.pt
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import requests

from . import common
from .service_stack import Stack, celeba_identities

FINAL = ("finished", "failed", "stopped", "canceled")


def pick_jobs(args: argparse.Namespace) -> list[tuple[str, list[Path]]]:
    """[(person name, image paths)] of random CelebA identities, ``--images`` in total."""
    groups = celeba_identities(Path(args.data) / "celeba1k")
    ids = sorted(groups)
    jobs: list[tuple[str, list[Path]]] = []
    total = 0
    for i in np.random.default_rng(0).permutation(len(ids)):
        paths = groups[ids[i]][: min(args.per_job, args.images - total)]
        jobs.append((f"celeba-{ids[i]}", paths))
        total += len(paths)
        if total >= args.images:
            return jobs
    return jobs


def in_process(rec: Any, data: list[bytes], batch: int, min_face: int) -> dict[str, Any]:
    """Images/s of decode + detect + align + embed, embedding ``batch`` faces at a time (the
    model's ceiling), and of the one-photo path (``embed_for_enrollment``)."""
    from recognizer.enrollment import embed_for_enrollment

    rec.embed(rec.align(rec.load(data[0]), rec.detector.detect(rec.load(data[0]))))  # warm-up
    per_batch, decode, faces = [], 0.0, 0
    t_all = time.perf_counter()
    for s in range(0, len(data), batch):
        t0 = time.perf_counter()
        crops = []
        for d in data[s:s + batch]:
            t = time.perf_counter()
            pixels = rec.load(d)
            decode += time.perf_counter() - t
            found = rec.detector.detect(pixels)
            if found:
                crops.append(rec.align(pixels, found[:1])[0])
        if crops:
            rec.embed(np.stack(crops))
        faces += len(crops)
        per_batch.append(len(data[s:s + batch]) / (time.perf_counter() - t0))
    overall = len(data) / (time.perf_counter() - t_all)
    t0 = time.perf_counter()
    statuses = Counter(embed_for_enrollment(rec, d, min_face_size=min_face).status for d in data)
    one_by_one = len(data) / (time.perf_counter() - t0)
    return {"batch": batch, "images_per_s_per_batch": common.stats(per_batch),
            "images_per_s": float(np.median(per_batch)), "images_per_s_overall": overall,
            "faces": faces, "decode_s_total": decode,
            "one_at_a_time_images_per_s": one_by_one, "one_at_a_time_statuses": dict(statuses)}


def submit_and_wait(base: str, jobs: list[tuple[str, list[bytes]]], timeout: float) -> dict[str, Any]:
    """Post every person's images, then poll until each job is final; the end time is the last
    job's ``ended_at`` (the worker's own clock on this machine), not the polling instant."""
    start = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    ids = []
    with requests.Session() as s:
        for name, images in jobs:
            files = [("images", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(images)]
            r = s.post(f"{base}/v1/enroll", data={"name": name}, files=files, timeout=120)
            if r.status_code != 202:
                raise RuntimeError(f"POST /v1/enroll: {r.status_code} {r.text[:500]}")
            ids.append(r.json()["job_id"])
        submitted = time.perf_counter() - t0
        views: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        for job_id in ids:  # jobs finish roughly in order: poll the oldest unfinished one
            while True:
                view = s.get(f"{base}/v1/jobs/{job_id}", timeout=30).json()
                if view.get("status") in FINAL:
                    views[job_id] = view
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {job_id} not finished after {timeout:.0f} s: {view}")
                time.sleep(0.05)
    polled = time.perf_counter() - t0
    ends = [_utc(v["ended_at"]) for v in views.values() if v.get("ended_at")]
    seconds = (max(ends) - start).total_seconds() if ends else polled
    images = sum(len(i) for _, i in jobs)
    summary = Counter()
    for v in views.values():
        summary.update(v.get("summary", {}))
    return {"jobs": len(ids), "images": images, "seconds": seconds, "seconds_polled": polled,
            "submit_seconds": submitted, "images_per_s": images / seconds,
            "job_statuses": dict(Counter(v["status"] for v in views.values())), "image_statuses": dict(summary)}


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def tables(res: dict) -> str:
    m = res["model"]
    rows = [[f"model in-process, batches of {m['batch']}", 1, common.num(m["images_per_s"], 1),
             f"{common.num(m['images_per_s_per_batch']['p95'], 1)} (p95 of batches); "
             f"{common.num(m.get('images_per_s_overall'), 1)} overall", "1.00x", ""],
            ["model in-process, one image at a time (sync enroll path)", 1, common.num(m["one_at_a_time_images_per_s"], 1),
             "", common.ratio(m["one_at_a_time_images_per_s"], m["images_per_s"]), ""]]
    for st in res["stages"]:
        rows.append(["queue: POST /v1/enroll -> jobs finished", st["workers"], common.num(st["images_per_s"], 1),
                     f"{st['images']} images, {st['jobs']} jobs, {st['seconds']:.1f} s",
                     common.ratio(st["images_per_s"], m["images_per_s"]),
                     common.ratio(st["images_per_s"], st["workers"] * m["images_per_s"])])
    return common.markdown_table(["path", "workers", "images/s", "detail", "vs model batched",
                                  "vs workers x model"], rows, align="lrrrrr")


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--model", default=str(common.DEFAULT_MODEL),
                   help="model artifact (copy runs/<run>/model.pt first: it is rewritten every epoch)")
    p.add_argument("--workers", default="1,2", help="worker counts to measure, in increasing order (default 1,2)")
    p.add_argument("--images", type=int, default=None, help="CelebA images per measurement (default 480; quick 32)")
    p.add_argument("--per-job", type=int, default=None, help="images per POST /v1/enroll (default 16; quick 8)")
    p.add_argument("--batch", type=int, default=None, help="in-process embedding batch (default 32; quick 8)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the jobs of one measurement")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"],
                   help="INFERENCE_BACKEND of the workers and of the in-process yardstick alike")
    p.add_argument("--keep-logs", action="store_true", help="keep the server/worker/redis logs (kept on failure)")
    args = p.parse_args(argv)
    q = args.quick
    args.images = args.images or (32 if q else 480)
    args.per_job = args.per_job or (8 if q else 16)
    args.batch = args.batch or (8 if q else 32)
    counts = [int(w) for w in args.workers.split(",")]
    model = Path(args.model)
    if not model.is_file():
        raise SystemExit(f"no model at {model}: train one (python -m trainer fit) or pass --model")
    if common.data_dir(args, "celeba1k") is None:
        raise SystemExit(f"no celeba1k under {args.data}: this benchmark needs the real images (--data)")
    common.set_threads(1)  # one torch thread, as each worker runs
    start = time.perf_counter()
    jobs = [(name, [pth.read_bytes() for pth in paths]) for name, paths in pick_jobs(args)]
    data = [d for _, images in jobs for d in images]
    print(f"{'QUICK (smoke run)' if q else 'full'}: {len(data)} CelebA images in {len(jobs)} jobs; workers {counts}",
          flush=True)

    from service.config import load_config
    from service.jobs import build_recognizer

    cfg = load_config({"MODEL_PATH": str(model), "TORCH_THREADS": 1, "INFERENCE_BACKEND": args.backend}, environ={})
    res: dict[str, Any] = {"images": len(data), "jobs": len(jobs), "per_job": args.per_job, "stages": [],
                           "backend": args.backend}
    with Stack(model, keep_logs=args.keep_logs) as stack:
        stack.start_redis()
        # one web process: it only parks uploads and enqueues. RATE_LIMIT off: the client polls its
        # jobs every 50 ms, over the default 600 requests a minute per address (seen: a 429 mid-run)
        base = stack.start_gunicorn(1, 1, RATE_LIMIT="off")
        rec = build_recognizer(cfg)  # as the workers build it
        res["model"] = in_process(rec, data, args.batch, cfg.min_enroll_face_size)
        res["model_version"] = rec.version
        print(f"  model in-process: {res['model']['images_per_s']:.1f} images/s", flush=True)
        warm = [(f"warm-up-{i}", data[:2]) for i in range(2 * max(counts))]
        running = 0
        for n in counts:
            while running < n:
                running += 1
                stack.start_worker(f"bench-worker-{running}", torch_threads=1, INFERENCE_BACKEND=args.backend)
            submit_and_wait(base, warm[: 2 * n], args.timeout)  # the first job of a worker pays lazy init
            stage = {"workers": n, **submit_and_wait(base, jobs, args.timeout)}
            res["stages"].append(stage)
            print(f"  {n} worker(s): {stage['images_per_s']:.1f} images/s ({stage['image_statuses']})", flush=True)
    return common.finish("enroll_queue", args, res, tables(res), start)


if __name__ == "__main__":
    raise SystemExit(main())
