"""Identify end to end over HTTP against the production server, next to the model's own floor.

Why: the product goal is that ``POST /v1/identify`` costs at most 1.15x what the model itself
needs (detection + embedding) at one client; everything else (HTTP, multipart parsing, decoding,
alignment, the gallery search with its Redis freshness check, JSON, metrics) must stay small.

1. Starts a private redis-server and gunicorn (``gunicorn.conf.py``, ``WEB_CONCURRENCY`` worker
   processes, ``TORCH_THREADS`` = ``--threads``) on free loopback ports, and enrolls a few CelebA
   people through the synchronous API so that identify searches a real gallery.
2. Load: 1, 2 and 4 concurrent clients (threads, one ``requests.Session`` each) post real photos
   from ``photos/`` (downscaled to ``--max-side`` as a client app would) and CelebA frames round
   robin, bounded by ``--duration`` and ``--max-requests``: latency p50/p95/p99, req/s, faces/s.
3. In-process, with the server stopped, the same images through the same code the view runs
   (``Recognizer.load``, ``.detector.detect``, ``.align``, ``.embed`` and ``GalleryCache.search``
   on the same Redis), same thread count: the breakdown per stage, and the ratio of the
   1-client end-to-end latency to detection + embedding (per image medians, summed over images).
4. Cross-request batching potential: the embedder's faces/s at batch 1 ... 32 on the real
   aligned faces, and what that could give identify throughput (Amdahl bound from the embed
   share). No batcher is built here; this measures whether one would pay.

    OMP_NUM_THREADS=1 python -m bench.http_identify --quick --model /tmp/model.pt
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

from . import common
from .service_stack import Stack, celeba_identities, jpeg_fit, percentile

STAGES = ("decode", "detect", "align", "embed", "search")
GOAL = 1.15  # product goal: end to end within 1.15x of detection + embedding at one client


@dataclass(frozen=True)
class Probe:
    """One image as it is sent (and as the in-process breakdown decodes it)."""

    name: str
    kind: str  # "photo" | "celeba"
    data: bytes


# ---- images ---------------------------------------------------------------------------------------

def pick_images(args: argparse.Namespace) -> tuple[list[Probe], list[tuple[str, bytes]]]:
    """Probes (photos first, then CelebA frames) and the gallery [(name, photo bytes)]: one
    image of each of ``--gallery`` CelebA identities is enrolled and another one of each is a
    probe, so some probes match; the other CelebA probes are of people not enrolled."""
    rng = np.random.default_rng(0)
    photos_dir = Path(args.data) / "photos"
    first = ["couple.jpg", "selfie-many-people.jpg"]  # 2 faces and a group: faces/s needs them
    rest = sorted(p.name for p in photos_dir.glob("*.jpg") if p.name not in first)
    names = (first + [rest[i] for i in rng.permutation(len(rest))])[: args.photos]
    probes = [Probe(n, "photo", jpeg_fit(photos_dir / n, args.max_side)) for n in names]
    groups = celeba_identities(Path(args.data) / "celeba1k")
    ids = [i for i in sorted(groups) if len(groups[i]) >= 2]
    ids = [ids[i] for i in rng.permutation(len(ids))]
    gallery = [(f"celeba-{i}", groups[i][0].read_bytes()) for i in ids[: args.gallery]]
    celeba = [groups[i][1] for i in ids[: args.gallery]] + [groups[i][0] for i in ids[args.gallery:]]
    probes += [Probe(p.name, "celeba", p.read_bytes()) for p in celeba[: args.celeba]]
    return probes, gallery


def enroll(base: str, gallery: list[tuple[str, bytes]]) -> dict[str, int]:
    """Create each person and enroll their photo with the synchronous routes; status counts."""
    counts: dict[str, int] = defaultdict(int)
    with requests.Session() as s:
        for name, data in gallery:
            r = s.post(f"{base}/v1/people", json={"name": name}, timeout=30)
            r.raise_for_status()
            pid = r.json()["person_id"]
            r = s.post(f"{base}/v1/people/{pid}/images", files={"image": (f"{name}.jpg", data, "image/jpeg")},
                       timeout=120)
            counts[r.json().get("status") or r.json().get("error", str(r.status_code))] += 1
    return dict(counts)


# ---- load -----------------------------------------------------------------------------------------

def run_load(base: str, probes: list[Probe], clients: int, duration: float, max_requests: int,
             keepalive: bool = False) -> dict[str, Any]:
    """``clients`` threads post probes round robin (one shared counter, so every image gets the
    same share) until ``max_requests`` were issued or ``duration`` seconds passed.

    Without ``keepalive`` each request opens a new loopback connection: a kept-alive connection
    stays with the gunicorn worker that accepted it, so two clients could share one worker for a
    whole run while the other idles, and results would depend on that draw."""
    headers = {} if keepalive else {"Connection": "close"}
    lock = threading.Lock()
    issued = 0
    lat: list[float] = []
    per_image: dict[int, list[float]] = defaultdict(list)
    faces = matches = 0
    errors: list[str] = []
    start = time.perf_counter()
    deadline = start + duration

    def client() -> None:
        nonlocal issued, faces, matches
        with requests.Session() as s:
            while True:
                with lock:
                    if issued >= max_requests or time.perf_counter() > deadline:
                        return
                    n = issued
                    issued += 1
                i = n % len(probes)
                p = probes[i]
                t0 = time.perf_counter()
                try:
                    r = s.post(f"{base}/v1/identify", files={"image": (p.name, p.data, "image/jpeg")},
                               headers=headers, timeout=300)
                    dt = time.perf_counter() - t0
                    body = r.json()
                    ok = r.status_code == 200
                except (requests.RequestException, ValueError) as exc:
                    ok, body, dt = False, {"error": type(exc).__name__, "message": str(exc)}, 0.0
                with lock:
                    if not ok:
                        errors.append(f"{p.name}: {body.get('error')}: {str(body.get('message'))[:200]}")
                        continue
                    lat.append(dt)
                    per_image[i].append(dt)
                    faces += len(body["faces"])
                    matches += sum(f["decision"] == "match" for f in body["faces"])

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(lat), "errors": len(errors), "error_samples": errors[:5],
            "wall_s": wall, "latency_s": {**common.stats(lat), "p50": percentile(lat, 50), "p99": percentile(lat, 99)},
            "req_per_s": len(lat) / wall, "faces": faces, "faces_per_s": faces / wall, "matches": matches,
            "per_image_median_s": {probes[i].name: float(np.median(v)) for i, v in per_image.items()}}


# ---- in-process ------------------------------------------------------------------------------------

def breakdown(rec: Any, cache: Any, probes: list[Probe], repeats: int, k: int) -> tuple[list[dict], np.ndarray]:
    """Per probe, the median seconds of each stage of ``POST /v1/identify``'s work (as
    ``Recognizer.analyze`` + ``GalleryCache.search`` do it), over ``repeats`` after one warm-up;
    also returns every aligned face, for the batch sweep."""
    rows, crops_all = [], []
    for p in probes:
        times: dict[str, list[float]] = defaultdict(list)
        for rep in range(repeats + 1):
            t0 = time.perf_counter()
            pixels = rec.load(p.data)
            t1 = time.perf_counter()
            faces = rec.detector.detect(pixels)
            t2 = time.perf_counter()
            crops = rec.align(pixels, faces)
            t3 = time.perf_counter()
            emb = rec.embed(crops)
            t4 = time.perf_counter()
            if faces:
                cache.search(emb, k)
            t5 = time.perf_counter()
            if rep:
                for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                    times[stage].append(dt)
                times["floor"].append((t2 - t1) + (t4 - t3))
                times["total"].append(t5 - t0)
        crops_all.append(crops)
        rows.append({"name": p.name, "kind": p.kind, "bytes": len(p.data), "size": f"{pixels.shape[1]}x{pixels.shape[0]}",
                     "faces": len(faces), **{f"{s}_s": float(np.median(v)) for s, v in times.items()}})
    return rows, np.concatenate(crops_all)


def batch_sweep(rec: Any, crops: np.ndarray, sizes: list[int], repeats: int) -> list[dict]:
    """Embedder faces/s per batch size on real aligned faces (tiled to the largest batch)."""
    if len(crops) == 0:
        return []
    pool = np.concatenate([crops] * -(-max(sizes) // len(crops)))[: max(sizes)]
    out = []
    for b in sizes:
        t = common.stats(common.time_calls(lambda b=b: rec.embed(pool[:b]), repeats, warmup=1))
        out.append({"batch": b, "seconds": t, "faces_per_s": b / t["median"]})
    for row in out:
        row["speedup_vs_1"] = row["faces_per_s"] / out[0]["faces_per_s"]
    return out


# ---- report ---------------------------------------------------------------------------------------

def summarize(rows: list[dict], one_client: dict[str, Any]) -> list[dict]:
    """Per image group: mean over images of per-image medians (ms per request), and the ratio
    of summed 1-client end-to-end medians to summed detect+embed medians."""
    e2e = one_client["per_image_median_s"]
    out = []
    for group in ("all", "photo", "celeba"):
        sel = [r for r in rows if (group == "all" or r["kind"] == group) and r["name"] in e2e]
        if not sel:
            continue
        mean = {s: float(np.mean([r[f"{s}_s"] for r in sel])) for s in (*STAGES, "floor", "total")}
        end = float(np.mean([e2e[r["name"]] for r in sel]))
        out.append({"group": group, "images": len(sel), "faces_per_image": float(np.mean([r["faces"] for r in sel])),
                    **{f"{k}_s": v for k, v in mean.items()}, "e2e_s": end, "rest_s": end - mean["total"],
                    "e2e_over_floor": end / mean["floor"]})
    return out


def batching_potential(summary: dict, sweep: list[dict], loads: list[dict], workers: int) -> list[dict]:
    """Upper bound on identify throughput from batching faces across concurrent requests:
    a request already embeds its own faces as one batch (about ``m``); a per-process batcher
    could join the ``clients / workers`` requests a process holds at once. With the embedder
    ``s`` times faster at that batch and embedding a share ``f`` of a request's time, throughput
    rises at most ``1 / ((1 - f) + f / s)`` (Amdahl; no waiting for a batch to fill counted)."""
    if not sweep:
        return []
    ips = {r["batch"]: r["faces_per_s"] for r in sweep}

    def at(n: float) -> int:  # the largest measured batch not above n
        return max([b for b in ips if b <= max(1.0, n)] or [min(ips)])

    m = max(1.0, summary["faces_per_image"])
    f = summary["embed_s"] / summary["e2e_s"]
    out = []
    for load in loads:
        per_process = max(1.0, load["clients"] / workers)
        b0, b1 = at(m), at(m * per_process)
        s = ips[b1] / ips[b0]
        out.append({"clients": load["clients"], "requests_per_process": per_process, "batch_now": b0,
                    "batch_joined": b1, "embed_speedup": s, "embed_share": f,
                    "throughput_gain_bound": 1.0 / ((1.0 - f) + f / s)})
    return out


def tables(res: dict) -> str:
    ms = common.ms
    loads = res["loads"]
    base_rps = loads[0]["req_per_s"] if loads else float("nan")
    parts = [f"### Load ({res['server']['web_concurrency']} gunicorn workers x {res['server']['torch_threads']} "
             f"torch threads; {len(res['images'])} images, gallery {res['gallery_people']} people)\n",
             common.markdown_table(
                 ["clients", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "req/s", "faces/s", "req/s vs 1 client"],
                 [[ld["clients"], ld["requests"], ld["errors"], ms(ld["latency_s"]["p50"]), ms(ld["latency_s"]["p95"]),
                   ms(ld["latency_s"]["p99"]), common.num(ld["req_per_s"], 2), common.num(ld["faces_per_s"], 2),
                   common.ratio(ld["req_per_s"], base_rps)] for ld in loads])]
    parts.append("\n### Where the time goes (ms per request: mean over images of per-image medians; "
                 "stages in-process, e2e over HTTP at 1 client)\n")
    parts.append(common.markdown_table(
        ["images", "n", "faces", *STAGES, "in-process", "e2e", "rest (HTTP, service)", "e2e / (detect+embed)"],
        [[r["group"], r["images"], common.num(r["faces_per_image"], 1), *(ms(r[f"{s}_s"]) for s in STAGES),
          ms(r["total_s"]), ms(r["e2e_s"]), _signed_ms(r["rest_s"]), common.ratio(r["e2e_s"], r["floor_s"])]
         for r in res["summary"]]))
    if res["summary"]:
        r = res["summary"][0]
        verdict = "meets" if r["e2e_over_floor"] <= GOAL else "misses"
        parts.append(f"\nAll images: end to end {r['e2e_over_floor']:.2f}x detection + embedding at 1 client "
                     f"({verdict} the {GOAL}x goal).")
    if res["batch_sweep"]:
        parts.append("\n### Embedder batch sweep (real aligned faces, same threads)\n")
        parts.append(common.markdown_table(
            ["batch", "ms per batch (median / p95)", "faces/s", "vs batch 1"],
            [[b["batch"], f"{ms(b['seconds']['median'])} / {ms(b['seconds']['p95'])}", common.num(b["faces_per_s"], 1),
              f"{b['speedup_vs_1']:.2f}x"] for b in res["batch_sweep"]]))
        parts.append("\nCross-request batching, upper bound on identify throughput gain:\n")
        parts.append(common.markdown_table(
            ["clients", "requests per process", "batch now -> joined", "embed speed-up", "embed share", "throughput bound"],
            [[p["clients"], common.num(p["requests_per_process"], 1), f"{p['batch_now']} -> {p['batch_joined']}",
              f"{p['embed_speedup']:.2f}x", f"{p['embed_share']:.0%}", f"{p['throughput_gain_bound']:.2f}x"]
             for p in res["batching_potential"]]))
    return "\n".join(parts)


def _signed_ms(seconds: float) -> str:
    """``rest`` is a difference of two measurements and can come out negative on a noisy machine."""
    return "-" + common.ms(-seconds) if seconds < 0 else common.ms(seconds)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--model", default=str(common.DEFAULT_MODEL),
                   help="model artifact (copy runs/<run>/model.pt first: it is rewritten every epoch)")
    p.add_argument("--web-concurrency", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")),
                   help="gunicorn worker processes (default: $WEB_CONCURRENCY or 2, the production default)")
    p.add_argument("--clients", default=None, help="concurrent client counts (default 1,2,4; quick 1,2)")
    p.add_argument("--duration", type=float, default=None, help="seconds per client count (default 40; quick 6)")
    p.add_argument("--max-requests", type=int, default=None, help="requests per client count (default 400; quick 40)")
    p.add_argument("--photos", type=int, default=None, help="photos from photos/ (default 16; quick 3)")
    p.add_argument("--celeba", type=int, default=None, help="CelebA frames (default 16; quick 3)")
    p.add_argument("--gallery", type=int, default=None, help="people enrolled first (default 8; quick 3)")
    p.add_argument("--max-side", type=int, default=None,
                   help="downscale photos to this longer side before sending (default 1280; quick 800; 0: as is)")
    p.add_argument("--repeats", type=int, default=None, help="in-process repeats per image (default 5; quick 2)")
    p.add_argument("--batch-sizes", default=None, help="embedder batch sweep (default 1,2,4,8,16,32; quick 1,2,4,8)")
    p.add_argument("--k", type=int, default=5, help="matches per face (the service's DEFAULT_K)")
    p.add_argument("--keepalive", action="store_true",
                   help="reuse each client's connection (default: a new connection per request, see run_load)")
    p.add_argument("--keep-logs", action="store_true", help="keep the server/redis logs (kept anyway on failure)")
    args = p.parse_args(argv)
    q = args.quick
    for name, full, quick in (("clients", "1,2,4", "1,2"), ("duration", 40.0, 6.0), ("max_requests", 400, 40),
                              ("photos", 16, 3), ("celeba", 16, 3), ("gallery", 8, 3), ("max_side", 1280, 800),
                              ("repeats", 5, 2), ("batch_sizes", "1,2,4,8,16,32", "1,2,4,8")):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    clients = [int(c) for c in str(args.clients).split(",")]
    sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    model = Path(args.model)
    if not model.is_file():
        raise SystemExit(f"no model at {model}: train one (python -m trainer fit) or pass --model")
    if common.data_dir(args, "photos") is None or common.data_dir(args, "celeba1k") is None:
        raise SystemExit(f"no face data under {args.data}: this benchmark needs photos/ and celeba1k/ (--data)")
    common.set_threads(args.threads)
    start = time.perf_counter()
    probes, gallery = pick_images(args)
    print(f"{'QUICK (smoke run)' if q else 'full'}: {len(probes)} images, gallery {len(gallery)}, "
          f"{args.web_concurrency} gunicorn workers x {args.threads} torch threads, clients {clients}", flush=True)
    res: dict[str, Any] = {"server": {"web_concurrency": args.web_concurrency, "torch_threads": args.threads,
                                      "gunicorn_threads": int(os.environ.get("GUNICORN_THREADS", "2"))},
                           "images": [{"name": pr.name, "kind": pr.kind, "bytes": len(pr.data)} for pr in probes]}
    with Stack(model, keep_logs=args.keep_logs) as stack:
        conn = stack.start_redis()
        base = stack.start_gunicorn(args.web_concurrency, args.threads, RATE_LIMIT="off")  # load, not limits
        print(f"  server up in {time.perf_counter() - start:.0f} s", flush=True)
        res["enrollment"] = enroll(base, gallery)
        res["gallery_people"] = res["enrollment"].get("enrolled", 0)
        run_load(base, probes, args.web_concurrency, 1e9, len(probes) + 2 * args.web_concurrency)  # warm both
        res["loads"] = []
        for c in clients:
            load = run_load(base, probes, c, args.duration, args.max_requests, args.keepalive)
            res["loads"].append(load)
            print(f"  {c} client(s): {load['requests']} requests, {load['req_per_s']:.2f} req/s", flush=True)
        stack.stop("gunicorn")  # quiet machine for the in-process part; Redis stays for the search

        from service.cache import GalleryCache
        from service.config import load_config
        from service.jobs import build_recognizer
        from service.store import GalleryStore

        cfg = load_config({"MODEL_PATH": str(model), "TORCH_THREADS": args.threads, "REDIS_URL": stack.redis_url},
                          environ={})
        rec = build_recognizer(cfg)  # exactly as each server process builds it
        cache = GalleryCache(GalleryStore(conn, rec.version, rec.dim, prefix=cfg.redis_key_prefix))
        cache.rebuild()
        rows, crops = breakdown(rec, cache, probes, args.repeats, args.k)
        res["per_image"] = rows
        res["summary"] = summarize(rows, res["loads"][0]) if clients[0] == 1 else []
        res["batch_sweep"] = batch_sweep(rec, crops, sizes, max(3, 2 * args.repeats))
        res["batching_potential"] = (batching_potential(res["summary"][0], res["batch_sweep"], res["loads"],
                                                        args.web_concurrency) if res["summary"] else [])
        res["model_version"] = rec.version
    return common.finish("http_identify", args, res, tables(res), start)


if __name__ == "__main__":
    raise SystemExit(main())
