"""dlib's face recognition network as a training-time teacher, its embeddings cached once per image.

The network (``dlib_face_recognition_resnet_model_v1``, PyPI ``face-recognition-models``) and its
5-point landmark model are in the public domain (CC0). dlib's 68-point model is not used. The
teacher runs only here, never in the service: the served model stays ours.

dlib itself places the face: its 5-point landmarks in the recipe's crop box of each aligned
178x218 frame (as ``bench.accuracy_vs_dlib`` gives it celeba1k), then its own 150x150 chip. The
descriptor network runs in PyTorch (trainer/dlib_net.py, read from dlib's own file and equal to
dlib's output to float rounding), batched, which is an order of magnitude faster than dlib's
one-face-at-a-time C++. Every training image is embedded once, ahead of training, into
``<cache>/teacher/`` (outside the repository; never committed): one file per shard of
``--shard K/N`` so two processes can fill it at once, saved every few hundred images so a killed
fill resumes.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recognizer.images import load_image
from recognizer.preprocess import AlignmentRecipe

from .data import Dataset, canonical_paths, discover

TEACHER_DIM = 128
# What each cached vector is: dlib's descriptor of the chip ("plain"), or the mean of its unit
# descriptors of the chip and its mirror image ("mirror"): dlib's own test-time mirror average,
# a better teacher (val TAR at FAR 1e-3 0.839 -> 0.858, docs/BENCHMARKS.md session 19) that
# matches the student, whose served embedding is mirror-averaged too.
TEACHER_VIEWS = ("plain", "mirror")
SAVE_EVERY = 512  # a multiple of BATCH: a save never splits a batch
BATCH = 64


def import_dlib(*names: str) -> list:
    """Import dlib and its companions (``face_recognition``, ``face_recognition_models``) without
    the pkg_resources warning they print, or exit with the one install line that brings them."""
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # face_recognition_models imports pkg_resources
        try:
            return [importlib.import_module(name) for name in names]
        except ImportError as exc:
            raise SystemExit(f"dlib is a training/benchmark extra ({exc}): "
                             ".venv/bin/pip install --no-deps -r bench/requirements.txt") from None


class DlibTeacher:
    """dlib's 5-point landmarks and face chips, and its ResNet descriptor in PyTorch; loaded once."""

    def __init__(self) -> None:
        from . import dlib_net

        dlib, models = import_dlib("dlib", "face_recognition_models")
        self._dlib = dlib
        self._shape = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self._net = dlib_net.load(models.face_recognition_model_location())
        self.version = f"dlib {dlib.__version__} dlib_face_recognition_resnet_model_v1 (PyTorch)"

    def chip(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The 150x150 RGB chip dlib's ``compute_face_descriptor`` would cut for the face in ``box``
        = (x0, y0, x1, y1)."""
        from .dlib_net import CHIP_PADDING, CHIP_SIZE

        shape = self._shape(image, self._dlib.rectangle(*box))
        return np.asarray(self._dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING))

    def describe(self, chips: np.ndarray, views: str = "plain") -> np.ndarray:
        """Unit-normalised 128-d descriptors of N chips (NxHxWx3 uint8), so the student can be
        taught cosines (dlib's own metric is the euclidean distance of raw descriptors, whose
        norms are all close to 1); ``views="mirror"``: of the chip and its mirror, averaged."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()
            return describe_tensor(self._net, x, views).numpy()

    def embed(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The unit descriptor of one face."""
        return self.describe(self.chip(image, box)[None])[0]


def describe_tensor(net, chips, views: str = "plain"):
    """dlib's unit descriptors of float chips (NCHW, 0-255) under ``views`` (TEACHER_VIEWS)."""
    import torch.nn.functional as F

    if views not in TEACHER_VIEWS:
        raise ValueError(f"teacher views {views!r}: one of {', '.join(TEACHER_VIEWS)}")
    vecs = F.normalize(net(chips), dim=1)
    if views == "mirror":
        vecs = F.normalize(vecs + F.normalize(net(chips.flip(3)), dim=1), dim=1)
    return vecs


def frame_box(image: np.ndarray, recipe: AlignmentRecipe) -> tuple[int, int, int, int]:
    """The recipe's crop box in this aligned frame's pixels (half-resolution frames are smaller)."""
    fw, fh = recipe.frame_size
    sx, sy = image.shape[1] / fw, image.shape[0] / fh
    x0, y0, x1, y1 = recipe.crop_box
    return round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)


def cache_key(dataset: Dataset, box: tuple[int, int, int, int], views: str = "plain") -> str:
    """Names the image list, how dlib was given the face and which views it described: another
    list, box or views misses (plain keys are those of every cache before views existed)."""
    tail = [] if views == "plain" else [views]
    src = json.dumps(["dlib-frame-box", list(box), canonical_paths(dataset), *tail])
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def _shard_path(cache_dir: Path, key: str, shard: tuple[int, int]) -> Path:
    return cache_dir / "teacher" / f"{key}-{shard[0]}of{shard[1]}.npz"


def _save(path: Path, vectors: np.ndarray, done: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, vectors=vectors, done=done)
    os.replace(tmp, path)


def fill(data_dir: str | os.PathLike, cache_dir: str | os.PathLike = ".cache", shard: tuple[int, int] = (0, 1),
         recipe: AlignmentRecipe | None = None, teacher: DlibTeacher | None = None, views: str = "plain") -> dict:
    """Embed this shard's images (every N-th from K) of a CelebA-layout source; resumable."""
    recipe = recipe or AlignmentRecipe()
    dataset = discover(data_dir)
    if dataset.layout != "celeba":
        raise ValueError(f"{data_dir}: the teacher reads aligned CelebA-layout frames (run `trainer prepare`)")
    key = cache_key(dataset, recipe.crop_box, views)
    path = _shard_path(Path(cache_dir), key, shard)
    vectors = np.zeros((len(dataset.paths), TEACHER_DIM), np.float32)
    done = np.zeros(len(dataset.paths), bool)
    if path.is_file():
        with np.load(path) as saved:
            vectors, done = saved["vectors"], saved["done"]
    teacher = teacher or DlibTeacher()
    mine = [i for i in range(shard[0], len(dataset.paths), shard[1]) if not done[i]]
    batch: list[int] = []
    chips: list[np.ndarray] = []
    for n, i in enumerate(tqdm(mine, desc=f"teacher {shard[0] + 1}/{shard[1]}", unit="img", mininterval=10)):
        image = load_image(dataset.paths[i])
        chips.append(teacher.chip(image, frame_box(image, recipe)))
        batch.append(i)
        if len(batch) == BATCH or n + 1 == len(mine):
            vectors[batch] = teacher.describe(np.stack(chips), views)
            done[batch] = True
            batch, chips = [], []
        if (n + 1) % SAVE_EVERY == 0:
            _save(path, vectors, done)
    _save(path, vectors, done)
    return {"data": str(data_dir), "key": key, "shard": list(shard), "embedded": len(mine),
            "done_in_shard": int(done[shard[0]::shard[1]].sum()), "images": len(dataset.paths)}


def load(dataset: Dataset, cache_dir: str | os.PathLike = ".cache",
         recipe: AlignmentRecipe | None = None, views: str = "plain") -> tuple[np.ndarray, np.ndarray]:
    """(vectors Nx128 float32, have mask) for every image of ``dataset``, merged over whatever
    shards exist; images no shard has embedded yet have ``have == False``."""
    recipe = recipe or AlignmentRecipe()
    key = cache_key(dataset, recipe.crop_box, views)
    vectors = np.zeros((len(dataset.paths), TEACHER_DIM), np.float32)
    have = np.zeros(len(dataset.paths), bool)
    for path in sorted((Path(cache_dir) / "teacher").glob(f"{key}-*of*.npz")):
        with np.load(path) as saved:
            if saved["done"].shape != have.shape:
                continue
            vectors[saved["done"]] = saved["vectors"][saved["done"]]
            have |= saved["done"]
    return vectors, have


def targets_for(paths: list[Path], sources: list[Path], cache_dir: str | os.PathLike = ".cache",
                recipe: AlignmentRecipe | None = None,
                views: str = "plain") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teacher vectors for these training images (any of ``sources``), centred over the images
    that have one and re-normalised (see trainer/distill.py for why), with the have-mask and the
    centre (a teacher run during training must be centred the same way)."""
    if views not in TEACHER_VIEWS:
        raise ValueError(f"teacher_views {views!r}: one of {', '.join(TEACHER_VIEWS)}")
    lookup: dict[str, np.ndarray] = {}
    for source in sources:
        dataset = discover(source)
        vectors, have = load(dataset, cache_dir, recipe, views)
        if not have.any():  # a partial cache is fine (those rows get no term); none at all is a mistake
            flag = "" if views == "plain" else f" --views {views}"
            raise ValueError(f"no teacher vectors ({views}) cached for {source} under {cache_dir}: run "
                             f"`python -m trainer teacher --data {source}{flag}` first (or train without --set distill)")
        lookup.update({str(p): v for p, v, h in zip(dataset.paths, vectors, have) if h})
    out = np.zeros((len(paths), TEACHER_DIM), np.float32)
    have = np.array([str(p) in lookup for p in paths], bool)
    centre = np.zeros(TEACHER_DIM, np.float32)
    if have.any():
        out[have] = np.stack([lookup[str(p)] for p, h in zip(paths, have) if h])
        centre = out[have].mean(0)
        out[have] -= centre
        out[have] /= np.maximum(np.linalg.norm(out[have], axis=1, keepdims=True), 1e-12)
    return out, have, centre


def chips_for(paths: list[Path], cache_dir: str | os.PathLike = ".cache", recipe: AlignmentRecipe | None = None,
              teacher: DlibTeacher | None = None) -> np.ndarray:
    """dlib's 150x150 chip of each image (N x 150 x 150 x 3 uint8), for a teacher that runs during
    training on the same blend the student sees. Cut once and kept in ``<cache>/chips/`` (outside
    the repository; never committed), keyed by the image list and the crop box."""
    from .dlib_net import CHIP_SIZE

    recipe = recipe or AlignmentRecipe()
    src = json.dumps(["dlib-chips", list(recipe.crop_box), [str(Path(p).resolve()) for p in paths]])
    path = Path(cache_dir) / "chips" / f"{hashlib.sha256(src.encode()).hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    teacher = teacher or DlibTeacher()
    chips = np.zeros((len(paths), CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    for i, p in enumerate(tqdm(paths, desc="dlib chips", unit="img", mininterval=10)):
        image = load_image(p)
        chips[i] = teacher.chip(image, frame_box(image, recipe))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, chips)
    os.replace(tmp, path)
    return chips
