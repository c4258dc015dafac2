"""Detection on the identify path: today's MIN_FACE_SIZE (20 px) against a checkpoint's 80 px.

The same probes as ``bench.http_identify`` (photos from ``photos/`` downscaled to 1280 px, always
``couple.jpg`` and ``selfie-many-people.jpg``, and CelebA frames, some of enrolled people), in one
process, A and B alternating per image so both see the same machine load:

* A: ``detector.detect(pixels)``, the deployment's minimum (``--min-face-size``, 20 as today);
* B: ``detector.detect(pixels, min_face_size=80)``, what ``POST /v1/identify`` does with
  ``min_face_size=80`` (MTCNN's pyramid starts two scales below 80 px instead of at 20 px);
* C: B with ``INFERENCE_BACKEND=onnx``: MTCNN's R-Net and O-Net and the embedding network under
  ONNX Runtime.

It reports detection time and detect + align + embed time (the identify path's model work) per
image (medians over repeats), their ratios, whether every face A finds of at least 80 px is found
by B (box IoU >= 0.9), and whether the identification answers (the matched person at the model's
threshold, or "unknown", against a gallery of enrolled CelebA people and distractors) are identical.

    OMP_NUM_THREADS=1 python -m bench.detect_speed --model /tmp/model.pt --threads 1
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from . import common
from .http_identify import pick_images


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def run(args: argparse.Namespace) -> dict:
    from index import VectorIndex
    from recognizer import Recognizer

    from .service_stack import celeba_identities

    common.set_threads(args.threads)
    rec = Recognizer(args.model, threads=args.threads, min_face_size=args.min_face_size, detect_max_side=1600)
    onnx = Recognizer(rec.artifact, threads=args.threads, min_face_size=args.min_face_size, detect_max_side=1600,
                      backend="onnx")
    probes, gallery = pick_images(args)
    # gallery: the enrolled CelebA people plus distractors (first image of further identities)
    groups = celeba_identities(Path(args.data) / "celeba1k")
    distract = [groups[i][0] for i in sorted(groups)[-args.distractors:]]
    names = [g[0] for g in gallery] + [f"distractor-{p.name}" for p in distract]
    vecs = []
    for _, data in gallery:
        faces = rec.analyze(data)
        vecs.append(faces[0].embedding)
    vecs.extend(rec.embed_images([str(p) for p in distract], crop_mode="frame"))
    index = VectorIndex.build(np.arange(len(vecs)), np.stack(vecs), kind="flat")

    def answers(pixels: np.ndarray, faces: list, embedder=rec) -> list[str]:
        """What identify answers for each face: the matched person, or "unknown"."""
        if not faces:
            return []
        emb = embedder.embed(rec.align(pixels, faces))
        cos, ids = index.search(emb, 1)
        return [names[i] if c >= rec.threshold else "unknown" for c, i in zip(cos[:, 0], ids[:, 0])]

    rows = []
    for probe in common.progress(probes, "images"):
        pixels = rec.load(probe.data)
        times = {key: {"detect": [], "path": []} for key in "ABC"}
        found = {}
        ways = [("A", None, rec), ("B", args.checkpoint, rec), ("C", args.checkpoint, onnx)]
        for r in range(args.repeats + 1):
            for key, mfs, way in ways if r % 2 == 0 else ways[::-1]:
                start = time.perf_counter()
                faces = way.detector.detect(pixels, mfs)
                mid = time.perf_counter()
                if faces:
                    way.embed(way.align(pixels, faces))
                end = time.perf_counter()
                if r:  # the first round warms up
                    times[key]["detect"].append(mid - start)
                    times[key]["path"].append(end - start)
                found[key] = faces
        a, b, c = found["A"], found["B"], found["C"]
        wanted = [f for f in a if f.size >= args.checkpoint]
        matched = [max((iou(f.box, g.box) for g in other), default=0.0) for f in wanted for other in (b, c)]
        # a face B or C finds that A did not (a face a little under the minimum that A found too is fine)
        strangers = [g for g in b + c if max((iou(f.box, g.box) for f in a), default=0.0) < 0.9]
        pairs = [(f, max(b, key=lambda g: iou(f.box, g.box))) for f in wanted] if b else []
        ans_a = answers(pixels, [f for f, _ in pairs])
        ans_b = answers(pixels, [g for _, g in pairs])
        ans_c = answers(pixels, [max(c, key=lambda g: iou(f.box, g.box)) for f in wanted] if c else [], onnx)
        rows.append({"name": probe.name, "kind": probe.kind, "faces_a": len(a), "faces_b": len(b),
                     "faces_a_under_min": len(a) - len(wanted), "min_iou": min(matched, default=1.0),
                     "same_faces": all(m >= 0.9 for m in matched) and not strangers,
                     "same_answers": ans_a == ans_b == ans_c and len(pairs) == len(wanted), "answers": ans_a,
                     **{f"{k}_{stage}": float(np.median(v)) for k, d in times.items() for stage, v in d.items()}})
    return {"rows": rows, "min_face_size": args.min_face_size, "checkpoint": args.checkpoint,
            "threads": args.threads, "gallery": len(names), "model": rec.version}


def tables(res: dict) -> str:
    out = []
    for group in ("all", "photo", "celeba"):
        rows = [r for r in res["rows"] if group == "all" or r["kind"] == group]
        if not rows:
            continue
        da, db, dc = (sum(r[f"{k}_detect"] for r in rows) for k in "ABC")
        pa, pb, pc = (sum(r[f"{k}_path"] for r in rows) for k in "ABC")
        out.append([group, len(rows), sum(r["faces_a"] for r in rows), sum(r["faces_b"] for r in rows),
                    sum(r["faces_a_under_min"] for r in rows), common.ms(da / len(rows)), common.ms(db / len(rows)),
                    common.ratio(da, db), common.ms(dc / len(rows)), common.ratio(da, dc),
                    common.ms(pa / len(rows)), common.ms(pb / len(rows)), common.ratio(pa, pb),
                    common.ms(pc / len(rows)), common.ratio(pa, pc),
                    f"{min(r['min_iou'] for r in rows):.3f}", sum(r["same_faces"] for r in rows),
                    sum(r["same_answers"] for r in rows)])
    head = ["images", "n", f"faces @{res['min_face_size']}", f"faces @{res['checkpoint']}",
            f"faces < {res['checkpoint']} px", f"detect ms @{res['min_face_size']}", f"detect ms @{res['checkpoint']}",
            "detect speed-up", f"detect ms @{res['checkpoint']} onnx", "detect speed-up (onnx)", f"detect+embed ms @{res['min_face_size']}", f"detect+embed ms @{res['checkpoint']}",
            "path speed-up", f"detect+embed ms @{res['checkpoint']} onnx", "path speed-up (onnx)", "min IoU",
            "same faces", "same answers"]
    text = common.markdown_table(head, out)
    per = [[r["name"], r["faces_a"], r["faces_b"], common.ms(r["A_detect"]), common.ms(r["B_detect"]),
            common.ratio(r["A_detect"], r["B_detect"]), f"{r['min_iou']:.3f}", r["same_faces"], r["same_answers"]]
           for r in res["rows"]]
    text += "\n\n" + common.markdown_table(["image", "faces A", "faces B", "detect ms A", "detect ms B", "speed-up",
                                            "min IoU", "same faces", "same answers"], per)
    return text


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--model", default=str(common.DEFAULT_MODEL), help="model artifact")
    p.add_argument("--min-face-size", type=int, default=20, help="the deployment's MIN_FACE_SIZE (today 20)")
    p.add_argument("--checkpoint", type=int, default=80, help="the per-request min_face_size to compare")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per image (default 5; quick 2)")
    p.add_argument("--distractors", type=int, default=200, help="CelebA distractor identities in the gallery")
    args = p.parse_args(argv)
    args.photos, args.celeba, args.gallery = (3, 3, 3) if args.quick else (16, 16, 8)
    args.max_side = 800 if args.quick else 1280
    args.repeats = args.repeats or (2 if args.quick else 5)
    if args.quick:
        args.distractors = 20
    if common.data_dir(args, "photos") is None or common.data_dir(args, "celeba1k") is None:
        raise SystemExit(f"no face data under {args.data}: this benchmark needs photos/ and celeba1k/ (--data)")
    start = time.perf_counter()
    res = run(args)
    return common.finish("detect_speed", args, res, tables(res), start, [])


if __name__ == "__main__":
    raise SystemExit(main())
