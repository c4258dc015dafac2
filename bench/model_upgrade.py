"""Model upgrade: re-embedding throughput against the model's batched rate, the time for 10k
people x 3 photos, and a rehearsal of the whole switch while a client keeps identifying.

1. Throughput: a private Redis holds N people x 3 kept crops (CelebA's aligned images are the
   canonical frame already) with model A's embeddings; ``reembed_pending`` embeds them all with
   model B (what ``upgrade.py run`` does). Compared with B's own batched rate (64 crops a pass,
   no Redis, no JPEG decoding) in the same process; 10k x 3 is extrapolated from the measured N.
2. Rehearsal, as an operator would do it: gunicorn + an RQ worker started with
   ``MODEL_PATH=A NEXT_MODEL_PATH=B``, 20 people enrolled over HTTP (one photo each), a client
   identifying each one's enrolled photo in a loop, ``python upgrade.py run --model B`` started
   beside it; every answer's top match is counted as right, wrong or unknown (no candidate: the
   person missing from the answering gallery), before, during and after the switch.

Models A and B: ``--model-a/--model-b``, else two tiny models trained here (two seeds) on 60
celeba1k identities. They are weak (their calibrated thresholds sit near cosine 1, so most
answers fall under them: counted apart), but the top match of a photo a person was enrolled
with is that person exactly when the upgrade kept them in the gallery, which is what this checks.

    python -m bench.model_upgrade [--quick] [--people 1000] [--model-a A.pt --model-b B.pt]
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from . import common
from .service_stack import Stack, celeba_identities

BATCH = 64


def train_tiny(celeba: Path, identities: list[str], seed: int, out: Path) -> Path:
    """A tiny model (trainer's ``tiny`` config, 2 epochs) on these identities' aligned images."""
    from trainer.configs import get_config
    from trainer.fit import Trainer

    data = out / "data"
    (data / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    groups = celeba_identities(celeba)
    lines = []
    for ident in identities:
        for path in groups[ident]:
            link = data / "img_align_celeba" / path.name
            if not link.exists():
                link.symlink_to(path)
            lines.append(f"{path.name} {ident}")
    (data / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    run = out / f"run-{seed}"
    Trainer(data, get_config("tiny", seed=seed), run, cache_dir=None).fit()
    return run / "model.pt"


def throughput(args, model_a: Path, model_b: Path, celeba: Path, people: int, stack: Stack) -> dict:
    from service.config import load_config
    from service.crops import decode_frame, encode_frame
    from service.models import load_recognizer
    from service.reembed import reembed_pending
    from service.store import GalleryStore
    from service.versions import register

    config = load_config({"TORCH_THREADS": args.threads}, environ={})
    rec_a, rec_b = load_recognizer(model_a, config), load_recognizer(model_b, config)
    client = stack.start_redis()
    store = GalleryStore(client, rec_a.version, rec_a.dim)
    groups = [paths[:3] for paths in celeba_identities(celeba).values() if len(paths) >= 3]
    rng = np.random.default_rng(0)
    crops: list[bytes] = []
    for i in range(people):
        paths = groups[i % len(groups)]
        pid = store.create_person(f"person {i}").person_id
        for n, path in enumerate(paths):
            frame = decode_frame(path.read_bytes())
            crop = encode_frame(frame)
            crops.append(crop)
            vec = rng.standard_normal(rec_a.dim).astype(np.float32)
            store.add_image(pid, f"{i:032x}{n:032x}", vec / np.linalg.norm(vec), {"enrolled_at": 0}, crop=crop)
    frames = np.stack([decode_frame(c) for c in crops[:BATCH]])
    batch = rec_b.frames_to_input(frames)
    batched = common.stats(common.time_calls(lambda: rec_b.embed(batch), repeats=5 if args.quick else 10))
    rate = BATCH / batched["median"]
    register(store, rec_b.version, keep_face_crops=True)
    report = reembed_pending(store, rec_b, progress=True)
    assert report.photos == 3 * people and not report.stuck, report
    # What a re-embedded crop costs in accuracy: B on the kept JPEG crop vs B on the original image.
    originals = rec_b.embed_images([p for g in groups[:100] for p in g[:1]], crop_mode="frame")
    from_crops = rec_b.embed(rec_b.frames_to_input(np.stack(
        [decode_frame(encode_frame(decode_frame(g[0].read_bytes()))) for g in groups[:100]])))
    cosines = np.sum(originals * from_crops, axis=1)
    return {"people": people, "photos": report.photos, "seconds": report.seconds,
            "photos_per_second": report.photos_per_second, "batched_faces_per_second": rate,
            "batched_median_s": batched["median"], "ratio": report.photos_per_second / rate,
            "extrapolated_10k_x3_minutes": 30_000 / report.photos_per_second / 60,
            "crop_bytes_median": float(np.median([len(c) for c in crops])),
            "crop_vs_original_cosine": {"min": float(cosines.min()), "median": float(np.median(cosines))}}


def rehearsal(args, model_a: Path, model_b: Path, celeba: Path, identities: list[str]) -> dict:
    import os

    os.environ["NEXT_MODEL_PATH"] = str(model_b.resolve())
    with Stack(model_a) as stack:
        stack.start_redis()
        base = stack.start_gunicorn(web_concurrency=1, torch_threads=1)
        stack.start_worker("w1", torch_threads=1)
        groups = celeba_identities(celeba)
        people: dict[str, bytes] = {}
        for ident in identities:
            photos = groups[ident][:1]
            files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
            job = requests.post(f"{base}/v1/enroll", data={"name": f"celeb {ident}"}, files=files, timeout=60).json()
            people[job["people"][0]["person_id"]] = photos[0].read_bytes()
        deadline = time.monotonic() + 600
        while requests.get(f"{base}/health", timeout=10).json()["queue"]["depth"] or \
                requests.get(f"{base}/v1/jobs/{job['job_id']}", timeout=10).json()["status"] != "finished":
            if time.monotonic() > deadline:
                raise RuntimeError("enrollment did not finish")
            time.sleep(0.5)
        answers: list[dict] = []
        phase = {"name": "before"}
        stop = threading.Event()

        def client() -> None:
            order = list(people.items())
            random.Random(0).shuffle(order)
            i = 0
            while not stop.is_set():
                pid, data = order[i % len(order)]
                i += 1
                body = requests.post(f"{base}/v1/identify", files={"image": ("q.jpg", data, "image/jpeg")},
                                     data={"k": "1"}, timeout=60).json()
                face = (body.get("faces") or [{}])[0]
                top = (face.get("matches") or [{}])[0].get("person_id")
                answers.append({"t": time.monotonic(), "phase": phase["name"], "model": body.get("model_version"),
                                "outcome": "right" if top == pid else ("unknown" if top is None else "wrong"),
                                "below_threshold": face.get("decision") != "match"})

        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(args.phase_seconds)
        phase["name"] = "during"
        env = stack.service_env(1)
        started = time.monotonic()
        run = subprocess.run([sys.executable, "upgrade.py", "run", "--model", str(model_b)], cwd=common.ROOT,
                             env=env, capture_output=True, text=True, timeout=900)
        upgrade_seconds = time.monotonic() - started
        phase["name"] = "after"
        time.sleep(args.phase_seconds)
        stop.set()
        thread.join(120)
        health = requests.get(f"{base}/health", timeout=10).json()["models"]
    counts: dict[str, dict[str, int]] = {}
    for a in answers:
        row = counts.setdefault(a["phase"], {"right": 0, "wrong": 0, "unknown": 0, "below_threshold": 0,
                                             "by_model": {}})
        row[a["outcome"]] += 1
        row["below_threshold"] += a["below_threshold"]
        row["by_model"][a["model"]] = row["by_model"].get(a["model"], 0) + 1
    return {"people": len(people), "counts": counts, "upgrade_rc": run.returncode,
            "upgrade_summary": json.loads(run.stdout) if run.returncode == 0 else run.stderr[-2000:],
            "upgrade_seconds": upgrade_seconds, "health_after": health}


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--people", type=int, default=1000, help="people x 3 photos re-embedded (default 1000)")
    p.add_argument("--model-a", type=Path, help="model A (default: a tiny model trained here)")
    p.add_argument("--model-b", type=Path, help="model B (default: a tiny model trained here)")
    p.add_argument("--phase-seconds", type=float, default=10.0, help="identify this long before and after")
    args = p.parse_args(argv)
    common.set_threads(args.threads)
    celeba = common.data_dir(args, "celeba1k")
    if celeba is None:
        print(f"model_upgrade needs the celeba1k folder under --data ({args.data})", file=sys.stderr)
        return 2
    people = 100 if args.quick else args.people
    identities = [i for i, paths in celeba_identities(celeba).items() if len(paths) >= 10][:60]
    with tempfile.TemporaryDirectory(prefix="facerec-upgrade-") as tmp:
        model_a = args.model_a or train_tiny(celeba, identities, 0, Path(tmp))
        model_b = args.model_b or train_tiny(celeba, identities, 1, Path(tmp))
        with Stack(model_a) as stack:
            speed = throughput(args, model_a, model_b, celeba, people, stack)
        drill = rehearsal(args, model_a, model_b, celeba, identities[:20])
    rows = [[k, v["right"], v["wrong"], v["unknown"], v["below_threshold"], ", ".join(f"{m[:8]}: {n}" for m, n in v["by_model"].items())]
            for k, v in drill["counts"].items()]
    text = "\n".join([
        f"re-embedding {speed['photos']} kept crops ({speed['people']} people x 3): {speed['seconds']:.1f} s, "
        f"{speed['photos_per_second']:.1f} photos/s; model B batched ({BATCH} a pass): "
        f"{speed['batched_faces_per_second']:.1f} faces/s -> {100 * speed['ratio']:.0f}% of it",
        f"10k people x 3 photos: about {speed['extrapolated_10k_x3_minutes']:.1f} min (extrapolated)",
        f"kept crop: median {speed['crop_bytes_median'] / 1024:.1f} KB; B(kept crop) vs B(original) cosine "
        f"median {speed['crop_vs_original_cosine']['median']:.4f}, min {speed['crop_vs_original_cosine']['min']:.4f}",
        "",
        f"rehearsal: {drill['people']} people, upgrade.py run rc={drill['upgrade_rc']} in {drill['upgrade_seconds']:.1f} s",
        common.markdown_table(["phase", "right", "wrong", "unknown", "under the model's threshold", "answered by"], rows),
        f"after: {json.dumps(drill['health_after'])}",
    ])
    return common.finish("model_upgrade", args, {"throughput": speed, "rehearsal": drill}, text, start)


if __name__ == "__main__":
    sys.exit(main())
