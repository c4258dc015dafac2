"""``python -m trainer prepare``: turn a fetched CelebA tree plus its labels file into the CelebA
layout the loader reads (``img_align_celeba/`` + ``identity_CelebA.txt``), outside the repository.

Two kinds of source (see ``shared/data/celeba_extra/README.md``):

- ``crops``: loose face crops of varying size. The largest MTCNN face of each is warped into the
  178x218 CelebA frame with the same template the service aligns with, so training sees these
  faces exactly as it sees celeba1k's.
- ``half-res``: CelebA's own aligned frames at half resolution (89x109), scaled back to 178x218.

Identities listed in ``--exclude`` (celeba1k's and celeba_ir's) are refused, not silently dropped:
a labels file that names one is a mistake upstream, and training on it would leak the benchmark.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from recognizer.images import load_image
from recognizer.preprocess import AlignmentRecipe, similarity_transform

KINDS = ("crops", "half-res")


def read_labels(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``<file> <identity>`` lines (no header) -> [(file, identity)]."""
    rows = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            rows.append((parts[0], parts[1]))
    return rows


def to_frame(image: np.ndarray, kind: str, detector, recipe: AlignmentRecipe) -> np.ndarray | None:
    """One source image -> the 178x218 aligned CelebA frame (None when no face is found)."""
    width, height = recipe.frame_size
    if kind == "half-res":
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
    faces = detector.detect(image)
    if not faces:
        return None
    matrix = similarity_transform(np.asarray(faces[0].landmarks), np.asarray(recipe.template))
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def prepare(source: str | os.PathLike, labels: str | os.PathLike, kind: str, out: str | os.PathLike,
            exclude: str | os.PathLike | None = None, shard: tuple[int, int] = (0, 1)) -> dict:
    """Write ``out/img_align_celeba/*.jpg`` for this shard's images, then ``out/identity_CelebA.txt``
    for every frame that exists by then. Each shard rewrites that file as it ends (atomically), so
    the last shard to end leaves the whole list, whatever the order. Resumable: frames already
    written are kept."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    source, out = Path(source), Path(out)
    rows = read_labels(labels)
    banned = set(Path(exclude).read_text().split()) if exclude else set()
    leaked = sorted({ident for _, ident in rows if ident in banned})
    if leaked:
        raise ValueError(f"{labels} names {len(leaked)} excluded identities (e.g. {leaked[:5]}); refusing")
    img_dir = out / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    detector = None
    if kind == "crops":
        from recognizer.detector import FaceDetector

        detector = FaceDetector(min_face_size=40)
    recipe = AlignmentRecipe()
    index, count = shard
    mine = rows[index::count]
    missing, no_face = 0, 0
    for name, _ in tqdm(mine, desc=f"prepare {kind} {index + 1}/{count}", unit="img", mininterval=5):
        target = img_dir / Path(name).with_suffix(".jpg").name
        if target.is_file():
            continue
        path = source / name
        if not path.is_file():
            missing += 1
            continue
        frame = to_frame(load_image(path), kind, detector, recipe)
        if frame is None:
            no_face += 1
            continue
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        tmp = target.with_suffix(".part")
        tmp.write_bytes(jpeg.tobytes())
        os.replace(tmp, target)  # a killed run leaves no half-written frame behind
    kept = [(n, i) for n, i in rows if (img_dir / Path(n).with_suffix(".jpg").name).is_file()]
    tmp = out / f"identity_CelebA.txt.{index}of{count}.part"
    tmp.write_text("".join(f"{Path(n).with_suffix('.jpg').name} {i}\n" for n, i in kept))
    os.replace(tmp, out / "identity_CelebA.txt")
    return {"images": len(rows), "this_shard": len(mine), "missing": missing, "no_face": no_face,
            "frames": len(kept), "identities": len({i for _, i in kept})}
