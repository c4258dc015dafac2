"""Training data: discover a dataset, split it, and cache its face crops once.

Two layouts are recognised: CelebA's own (``img_align_celeba/`` + ``identity_CelebA.txt``,
with or without a header line; images already in the canonical aligned frame, so the crop
is the recipe's box) and folder-per-person (``root/<person>/<image>``; faces are detected and
aligned with the recognizer's detector, the largest face per image).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recognizer.images import load_image
from recognizer.preprocess import AlignmentRecipe, align_face, crop_aligned_frame, resize_to_input

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard K/N`` of the commands that split work over N processes (K counts from 0): an
    argparse ``type``. ``N/N`` would silently skip image 0 (item K::N of each), so it is refused."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N, e.g. 0/2 and 1/2 for two processes") from None
    if n < 1 or not 0 <= k < n:
        valid = f"0/{n} .. {n - 1}/{n}" if n >= 1 else "N of at least 1"
        raise argparse.ArgumentTypeError(f"{text!r}: K counts from 0 and must be below N ({valid})")
    return k, n


@dataclass
class Dataset:
    """Image paths with integer identity labels; ``layout`` says how to crop them."""

    root: Path
    layout: str  # "celeba" or "folders"
    paths: list[Path]
    identities: list[str]  # one per image

    @property
    def labels(self) -> np.ndarray:
        names = sorted(set(self.identities))
        index = {n: i for i, n in enumerate(names)}
        return np.array([index[n] for n in self.identities], dtype=np.int64)


def canonical_paths(dataset: Dataset) -> list[str]:
    """The images' paths under the dataset's resolved root: what cache keys are made of, so
    ``../shared/data/celeba1k`` and ``/work/shared/data/celeba1k`` name the same cache (a key
    from the paths as typed once left a teacher cache silently unused)."""
    root = dataset.root.resolve()
    return [str(root / p.relative_to(dataset.root)) for p in dataset.paths]


def discover(root: str | os.PathLike, limit_identities: int | None = None) -> Dataset:
    """Find the layout of ``root`` and list its images (optionally only the first N identities)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    ident_file = root / "identity_CelebA.txt"
    if ident_file.is_file() and (root / "img_align_celeba").is_dir():
        pairs = []
        for line in ident_file.read_text().splitlines():
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                continue  # header line(s) such as "202599" or "image_id identity"
            pairs.append((parts[0], parts[1]))
        img_dir = root / "img_align_celeba"
        pairs = [(name, ident) for name, ident in pairs if (img_dir / name).is_file()]
        dataset = Dataset(root, "celeba", [img_dir / n for n, _ in pairs], [i for _, i in pairs])
    else:
        people = sorted(p for p in root.iterdir() if p.is_dir())
        paths, idents = [], []
        for person in people:
            for img in sorted(person.iterdir()):
                if img.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(img)
                    idents.append(person.name)
        dataset = Dataset(root, "folders", paths, idents)
    if not dataset.paths:
        raise ValueError(f"no images found in {root} (expected CelebA layout or root/<person>/<image>)")
    if limit_identities:
        keep = set(sorted(set(dataset.identities), key=_natural)[:limit_identities])
        sel = [i for i, ident in enumerate(dataset.identities) if ident in keep]
        dataset = Dataset(root, dataset.layout, [dataset.paths[i] for i in sel], [dataset.identities[i] for i in sel])
    return dataset


def _natural(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


@dataclass
class Splits:
    """Indices into the dataset: training images, closed-set validation images (of training
    identities) and open-set images (identities never trained on)."""

    train: np.ndarray
    closed_val: np.ndarray
    open_set: np.ndarray

    def to_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in ("train", "closed_val", "open_set")}

    @classmethod
    def from_dict(cls, d: dict) -> "Splits":
        return cls(*(np.asarray(d[k], dtype=np.int64) for k in ("train", "closed_val", "open_set")))


def make_splits(labels: np.ndarray, open_identities: int, val_per_identity: int, seed: int) -> Splits:
    """Seeded split: ``open_identities`` whole identities held out; of every other identity with
    at least ``val_per_identity + 2`` images, ``val_per_identity`` images held out."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    held = set(rng.permutation(classes)[:open_identities].tolist())
    train, val, open_set = [], [], []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if c in held:
            open_set.extend(idx.tolist())
            continue
        idx = rng.permutation(idx)
        n_val = val_per_identity if len(idx) >= val_per_identity + 2 else 0
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return Splits(np.sort(train), np.sort(val), np.sort(open_set))


def closed_set_gallery(labels: np.ndarray, train: np.ndarray, per_identity: int, seed: int) -> np.ndarray:
    """Up to ``per_identity`` training images of each training identity: the gallery that
    closed-set top-1 is measured against (held-out images of the same people are the probes).
    Seeded, so the trainer's per-epoch numbers and a release's are on the same gallery."""
    rng = np.random.default_rng(seed)
    train_labels = labels[train]
    gallery: list[int] = []
    for c in np.unique(train_labels):
        gallery.extend(rng.permutation(train[train_labels == c])[:per_identity].tolist())
    return np.sort(np.array(gallery, dtype=np.int64))


def _crop_one(path: Path, layout: str, recipe: AlignmentRecipe, detector) -> np.ndarray | None:
    image = load_image(path)
    if layout == "celeba":
        return resize_to_input(crop_aligned_frame(image, recipe), recipe)
    faces = detector.detect(image)
    if not faces:
        return None
    return resize_to_input(align_face(image, np.array(faces[0].landmarks), recipe), recipe)


def crops_cache_path(dataset: Dataset, recipe: AlignmentRecipe, cache_dir: str | os.PathLike) -> Path:
    """Where :func:`load_crops` keeps this dataset's crops: the key names the layout, the recipe
    and the file list, so another list or recipe misses instead of reading stale crops."""
    key_src = json.dumps([dataset.layout, recipe.to_dict(), canonical_paths(dataset)])
    return Path(cache_dir) / f"crops-{hashlib.sha256(key_src.encode()).hexdigest()[:16]}.npz"


def load_crops(dataset: Dataset, recipe: AlignmentRecipe, cache_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    """(crops NxHxWx3 uint8, ok mask) for every image, decoded and aligned once and cached
    on disk under a key made of the file list and the recipe."""
    cache = crops_cache_path(dataset, recipe, cache_dir) if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache) as data:
            return data["crops"], data["ok"]
    detector = None
    if dataset.layout == "folders":
        from recognizer.detector import FaceDetector

        detector = FaceDetector()
    height, width = recipe.input_size
    crops = np.zeros((len(dataset.paths), height, width, 3), np.uint8)
    ok = np.zeros(len(dataset.paths), bool)
    for i, path in enumerate(tqdm(dataset.paths, desc="decode+align", unit="img", mininterval=2)):
        try:
            crop = _crop_one(path, dataset.layout, recipe, detector)
        except Exception:
            crop = None
        if crop is not None:
            crops[i], ok[i] = crop, True
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, crops=crops, ok=ok)
        os.replace(tmp, cache)
    return crops, ok


def model_split(config: dict, root: str | os.PathLike, recipe: AlignmentRecipe,
                cache_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray, Splits]:
    """(crops, labels, splits) of the main source as a model recorded in its training ``config``
    was trained on, rebuilt the way ``trainer fit`` built them; ``ValueError`` when an image fails
    to decode here (the split's indices would shift)."""
    dataset = discover(root, config.get("limit_identities"))
    crops, ok = load_crops(dataset, recipe, cache_dir)
    if not ok.all():
        raise ValueError(f"{int((~ok).sum())} images failed to decode; split indices would shift")
    splits = make_splits(dataset.labels, int(config["open_identities"]), int(config["val_per_identity"]),
                         int(config["seed"]))
    return crops, dataset.labels, splits


def sample_rows(rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` of ``rows`` (all when fewer), seeded and in order."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=min(count, len(rows)), replace=False))


def add_extra_sources(crops: np.ndarray, labels: np.ndarray, splits: Splits, extra_dirs: list[Path],
                      recipe: AlignmentRecipe, cache_dir: str | os.PathLike | None, min_images: int,
                      keep_below_min: bool = False) -> tuple[np.ndarray, np.ndarray, Splits, list[dict], list[Path],
                                                             np.ndarray]:
    """Append training-only sources after the main one. Every extra identity gets a label of its
    own, distinct from every other source's (the same CelebA id in two sources stays two labels:
    the sources are declared disjoint, and a merge would only hide a mistake). Identities with
    fewer than ``min_images`` images are left out (CosFace cannot learn a class from one image),
    unless ``keep_below_min``: then they are kept under labels of their own and flagged in the
    returned ``teacher_only`` mask (all rows), for a distillation term without a CosFace class.
    The split (held-out identities and images) stays that of the main source. Also returns the
    appended images' paths, in order (what teacher vectors are looked up by)."""
    summary = []
    next_label = int(labels.max()) + 1 if len(labels) else 0
    parts_crops, parts_labels, train, paths = [crops], [labels], [splits.train], []
    parts_teacher_only = [np.zeros(len(labels), bool)]
    offset = len(labels)
    for directory in extra_dirs:
        dataset = discover(directory)
        extra_crops, ok = load_crops(dataset, recipe, cache_dir)
        extra_labels = dataset.labels[ok]
        extra_crops = extra_crops[ok]
        classes, counts = np.unique(extra_labels, return_counts=True)
        few = ~np.isin(extra_labels, classes[counts >= min_images])
        keep = np.ones(len(extra_labels), bool) if keep_below_min else ~few
        extra_crops, extra_labels = extra_crops[keep], extra_labels[keep]
        parts_teacher_only.append(few[keep])
        paths += [dataset.paths[i] for i in np.flatnonzero(ok)[keep]]
        _, extra_labels = np.unique(extra_labels, return_inverse=True)
        parts_crops.append(extra_crops)
        parts_labels.append(extra_labels + next_label)
        train.append(np.arange(offset, offset + len(extra_labels)))
        summary.append({"data": str(directory), "images": int(len(extra_labels)),
                        "identities": int(len(np.unique(extra_labels))), "no_face": int((~ok).sum()),
                        f"dropped_under_{min_images}_images": int((~keep).sum()),
                        **({"teacher_only_images": int(few.sum())} if keep_below_min else {})})
        next_label += int(extra_labels.max()) + 1 if len(extra_labels) else 0
        offset += len(extra_labels)
    if not extra_dirs:
        return crops, labels, splits, summary, paths, parts_teacher_only[0]
    return (np.concatenate(parts_crops), np.concatenate(parts_labels),
            Splits(np.concatenate(train), splits.closed_val, splits.open_set), summary, paths,
            np.concatenate(parts_teacher_only))
