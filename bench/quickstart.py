"""The README's quick start, run as written against a fresh stack: what it answered is what the
README quotes, so the quote has a command behind it.

A private redis-server, gunicorn (1 process) and one RQ worker; Ada and Bob enrolled with three
CelebA photos each through ``POST /v1/enroll`` (the background job, followed to its end), then
three other photos of each and one of a stranger sent to ``POST /v1/identify``. The people are
held-out identities of celeba1k (never trained on). Prints one row per photo: the decision, the
top match and its cosine; the JSON holds every answer.

    python -m bench.quickstart [--model M]
"""
from __future__ import annotations

import time
from pathlib import Path

import requests

from . import common
from .enroll_queue import submit_and_wait
from .service_stack import Stack

# The README's photos (celeba1k/img_align_celeba/<file>.jpg).
ENROLL = {"Ada": ("000026", "001042", "007868"), "Bob": ("000394", "000783", "014417")}
PROBES = [("Ada", f) for f in ("022511", "027855", "031576")] + \
         [("Bob", f) for f in ("024132", "031792", "045696")] + [(None, "000706")]


def run(base: str, photos: Path) -> list[dict]:
    """Enroll (the background jobs, followed to their end), then identify every probe; one dict per probe."""
    jobs = [(name, [(photos / f"{f}.jpg").read_bytes() for f in files]) for name, files in ENROLL.items()]
    done = submit_and_wait(base, jobs, timeout=300.0)
    if done["job_statuses"] != {"finished": len(jobs)} or done["image_statuses"].get("enrolled") != done["images"]:
        raise RuntimeError(f"enrolling: {done}")
    rows = []
    for truth, f in PROBES:
        r = requests.post(f"{base}/v1/identify", files={"image": (f"{f}.jpg", (photos / f"{f}.jpg").read_bytes(),
                                                                  "image/jpeg")}, timeout=60)
        r.raise_for_status()
        face = r.json()["faces"][0]
        top = face["matches"][0] if face["matches"] else {}
        answer = top.get("name") if face["decision"] == "match" else "unknown"
        rows.append({"photo": f, "truth": truth or "stranger", "decision": face["decision"], "top": top.get("name"),
                     "cosine": top.get("cosine"), "right": answer == (truth or "unknown")})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--model", default=str(common.DEFAULT_MODEL))
    args = p.parse_args(argv)
    photos = common.data_dir(args, "celeba1k")
    if photos is None:
        raise SystemExit(f"no celeba1k under {args.data}: this benchmark needs the real images (--data or $FACE_DATA)")
    start = time.perf_counter()
    with Stack(Path(args.model)) as stack:
        stack.start_redis()
        base = stack.start_gunicorn(1, args.threads)
        stack.start_worker("w1", args.threads)
        model = requests.get(f"{base}/health", timeout=30).json().get("model_version")
        rows = run(base, photos / "img_align_celeba")
    table = common.markdown_table(["photo", "who", "decision", "top match", "cosine"],
                                  [[r["photo"], r["truth"], r["decision"], r["top"], common.num(r["cosine"])]
                                   for r in rows])
    right = sum(r["right"] for r in rows)
    text = f"model {model}: {right}/{len(rows)} answered right\n\n{table}"
    return common.finish("quickstart", args, {"model_version": model, "rows": rows, "right": right}, text, start)


if __name__ == "__main__":
    raise SystemExit(main())
