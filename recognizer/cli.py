"""Local command line: enroll people and identify faces with no server and no Redis.

    python -m recognizer enroll --model M --gallery DIR NAME IMAGE...
    python -m recognizer identify --model M --gallery DIR IMAGE...
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tqdm import tqdm

from .artifact import default_model_path
from .errors import FaceServiceError


def resolve_model(path: str | None) -> Path:
    """``--model``, else ``MODEL_PATH``, else the shipped release model."""
    return Path(path) if path else default_model_path()


def score_digits(threshold: float) -> int:
    """Decimals (3 to 6) that show two significant digits of the threshold's distance from 1, so
    that 0.99994 does not print as 1.000; cosines printed alike can be compared with it by eye."""
    gap = 1.0 - threshold
    return min(6, max(3, math.floor(-math.log10(gap)) + 2)) if gap > 0 else 3


def _enroll(args: argparse.Namespace) -> int:
    from index import Gallery
    from recognizer import Recognizer

    from .enrollment import ENROLLED, embed_for_enrollment

    recognizer = Recognizer(resolve_model(args.model), threads=args.threads, detect_max_side=args.detect_max_side)
    gallery = Gallery.open_or_create(args.gallery, recognizer.version, recognizer.dim)
    existing = gallery.find_by_name(args.name)
    person_id = existing[0].person_id if existing else gallery.add_person(args.name)
    vectors, failures = {}, 0
    for path in tqdm(args.images, desc=f"enrolling {args.name}", unit="img", disable=len(args.images) < 4):
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            print(f"{path}: unreadable ({exc.strerror})")
            failures += 1
            continue
        result = embed_for_enrollment(recognizer, data, args.min_face_size)
        note = f" ({result.message})" if result.message else ""
        print(f"{path}: {result.status}{note}")
        if result.status == ENROLLED:
            vectors[result.image_hash] = result.embedding
        else:
            failures += 1
    added = gallery.add_images(person_id, vectors) if vectors else 0
    gallery.save(args.gallery)
    info = gallery.get_person(person_id)
    print(f"{info.name} ({person_id}): {added} new image(s), {info.image_count} in all; "
          f"gallery has {len(gallery.people())} people")
    return 0 if vectors or not args.images else 1 if failures else 0


def _identify(args: argparse.Namespace) -> int:
    from index import Gallery, decide
    from recognizer import Recognizer

    recognizer = Recognizer(resolve_model(args.model), threads=args.threads, detect_max_side=args.detect_max_side)
    gallery = Gallery.load(args.gallery, recognizer.version)
    threshold = recognizer.threshold if args.threshold is None else args.threshold
    digits = score_digits(threshold)
    for path in args.images:
        try:
            faces = recognizer.analyze(path)
        except FaceServiceError as exc:
            print(f"{path}: {exc.message}")
            continue
        print(f"{path}: {len(faces)} face(s)")
        if not faces:
            continue
        results = gallery.search([f.embedding for f in faces], k=args.k)
        for n, (face, matches) in enumerate(zip(faces, results), 1):
            box = ", ".join(f"{v:.0f}" for v in face.face.box)
            decision = decide(matches, threshold)
            head = matches[0].name if decision == "match" else "unknown"
            print(f"  face {n} [{box}] p={face.face.probability:.3f}: {head}")
            for m in matches:
                print(f"      {m.name:<24} cosine {m.cosine:+.{digits}f}  angle {m.angle_deg:5.1f} deg")
    print(f"(threshold {threshold:.{digits}f}, model {recognizer.version})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recognizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("enroll", "identify"):
        p = sub.add_parser(name)
        p.add_argument("--model", default=None, help="model.pt (default: MODEL_PATH, else the shipped models/facerec.pt)")
        p.add_argument("--gallery", required=True, help="gallery directory")
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--detect-max-side", type=int, default=1600,
                       help="look for faces on a copy of larger photos shrunk to this side (0: full size)")
        if name == "enroll":
            p.add_argument("--min-face-size", type=int, default=40)
            p.add_argument("name", help="the person's display name (an existing name adds images)")
        else:
            p.add_argument("-k", type=int, default=3, help="candidates per face")
            p.add_argument("--threshold", type=float, default=None, help="override the model's threshold")
        p.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    try:
        return _enroll(args) if args.command == "enroll" else _identify(args)
    except FaceServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
