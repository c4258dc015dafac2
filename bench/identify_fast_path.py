"""Identify over HTTP: today's path against issue 13's fast paths, in one run, answers compared.

One private Redis and gallery (CelebA people enrolled through the API, as ``bench.http_identify``
does), two gunicorns with the same model (``--web-concurrency`` workers x 1 torch thread each):
``INFERENCE_BACKEND=torch``, ``onnx`` and ``onnx-int8`` (three gunicorns). Four ways to identify:

* ``today``: torch, the service's default ``MIN_FACE_SIZE`` (20);
* ``min_face_size=80``: torch, the request asks for faces of 80 px and more (a checkpoint camera);
* ``min_face_size=80 + onnx``: the same request to the ONNX Runtime server;
* ``min_face_size=80 + onnx-int8``: the same to the server with the int8 embedding network
  (the parameters beside the model, ``trainer calibrate-int8``).

One client; every image goes to the ways in turn, round after round, so drift on the
machine hits all of them alike. Reported: p50 per way (over all requests, and per image kind), its
ratio to today's, and whether the answers are today's: per image the same number of faces, each
box with IoU >= 0.9 against today's, and the same decision and top person for each face.

    OMP_NUM_THREADS=1 python -m bench.identify_fast_path [--rounds 7] [--quick]
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from . import common
from .http_identify import enroll, pick_images
from .service_stack import Stack

WAYS = (("today", "torch", None), ("min_face_size=80", "torch", 80), ("min_face_size=80 + onnx", "onnx", 80),
        ("min_face_size=80 + onnx-int8", "onnx-int8", 80))


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def answer(body: dict) -> list[tuple[list[float], str, str | None]]:
    return [(f["box"], f["decision"], (f["person"] or {}).get("person_id")) for f in body["faces"]]


def same_answer(a: list, b: list) -> bool:
    """Same faces (boxes matched greedily by IoU >= 0.9) with the same decision and person."""
    if len(a) != len(b):
        return False
    left = list(b)
    for box, decision, person in a:
        best = max(left, key=lambda f: iou(box, f[0]))
        if iou(box, best[0]) < 0.9 or best[1:] != (decision, person):
            return False
        left.remove(best)
    return True


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--model", default=str(common.DEFAULT_MODEL))
    p.add_argument("--web-concurrency", type=int, default=1, help="gunicorn workers per server (1 client: 1)")
    p.add_argument("--rounds", type=int, default=7, help="requests per image and way")
    p.add_argument("--photos", type=int, default=16)
    p.add_argument("--celeba", type=int, default=16)
    p.add_argument("--gallery", type=int, default=8)
    p.add_argument("--max-side", type=int, default=1280)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.photos, args.celeba, args.gallery = 2, 3, 3, 3
    if common.data_dir(args, "photos") is None or common.data_dir(args, "celeba1k") is None:
        raise SystemExit(f"no face data under {args.data}: this benchmark needs photos/ and celeba1k/ (--data)")
    start = time.perf_counter()
    probes, gallery = pick_images(args)
    lat: dict[str, list[list[float]]] = {w: [[] for _ in probes] for w, _, _ in WAYS}
    answers: dict[str, list[Any]] = {w: [None] * len(probes) for w, _, _ in WAYS}
    with Stack(Path(args.model)) as stack:
        stack.start_redis()
        # RATE_LIMIT off: one client sends ~800 requests in a minute or two, over the default
        # 600/minute per address (the limiter's windows live in the shared Redis); it measures the model path.
        bases = {"torch": stack.start_gunicorn(args.web_concurrency, 1, name="gunicorn-torch", RATE_LIMIT="off"),
                 "onnx": stack.start_gunicorn(args.web_concurrency, 1, name="gunicorn-onnx",
                                              INFERENCE_BACKEND="onnx", RATE_LIMIT="off"),
                 "onnx-int8": stack.start_gunicorn(args.web_concurrency, 1, name="gunicorn-onnx-int8",
                                                   INFERENCE_BACKEND="onnx-int8", RATE_LIMIT="off")}
        enrolled = enroll(bases["torch"], gallery)
        with requests.Session() as s:
            for r in common.progress(range(args.rounds + 1), "rounds (the first one warms up)"):
                for i, probe in enumerate(probes):
                    for way, backend, mfs in WAYS:
                        data = {} if mfs is None else {"min_face_size": str(mfs)}
                        t0 = time.perf_counter()
                        resp = s.post(f"{bases[backend]}/v1/identify", data=data,
                                      files={"image": (probe.name, probe.data, "image/jpeg")}, timeout=120)
                        took = time.perf_counter() - t0
                        resp.raise_for_status()
                        if r == 0:
                            answers[way][i] = answer(resp.json())
                        else:
                            lat[way][i].append(took)
    rows, payload = [], {"enrolled": enrolled, "images": [pr.name for pr in probes], "ways": {}}
    kinds = {"all": range(len(probes))} | {k: [i for i, pr in enumerate(probes) if pr.kind == k]
                                           for k in ("photo", "celeba")}
    today = {k: float(np.median([t for i in idx for t in lat["today"][i]])) for k, idx in kinds.items()}
    for way, _, _ in WAYS:
        p50 = {k: float(np.median([t for i in idx for t in lat[way][i]])) for k, idx in kinds.items()}
        same = [same_answer(answers["today"][i], answers[way][i]) for i in range(len(probes))]
        faces = sum(len(a) for a in answers[way])
        payload["ways"][way] = {"p50_s": p50, "same_answers": int(sum(same)), "faces": faces,
                                "differs": [probes[i].name for i, ok in enumerate(same) if not ok]}
        rows.append([way, *(f"{1000 * p50[k]:.1f}" for k in kinds), f"{p50['all'] / today['all']:.2f}x",
                     f"{sum(same)} of {len(probes)}", faces])
    table = common.markdown_table(["way", "p50 ms, all", "photos", "CelebA frames", "vs today", "answers = today's",
                                   "faces"], rows)
    text = (f"{len(probes)} images ({len(kinds['photo'])} photos at <= {args.max_side} px, {len(kinds['celeba'])} "
            f"CelebA frames), {args.rounds} timed rounds, 1 client, gallery {len(gallery)} ({enrolled})\n\n{table}")
    return common.finish("identify_fast_path", args, payload, text, start)


if __name__ == "__main__":
    raise SystemExit(main())
