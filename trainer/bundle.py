"""Carry a run's training caches to a borrowed machine, and its model back, in size-limited parts.

A lent GPU machine sees only what is sent with the repository (tens of MiB a call) and returns
files of a few MiB each. ``pack`` writes each source's cached crops (WebP, lossy; ~2 KB a crop
at 96x80 instead of 23 KB raw) and its teacher vectors (fp16, every cached view) into parts of at most
``--part-mib``, with a manifest of every image path. ``unpack`` on the other machine rebuilds
the same caches under the same keys, with empty placeholder files at the original absolute
paths so that ``discover`` lists the same images, and checks each key before writing: the
trainer then runs there unchanged and never reads a pixel of the placeholders. ``shrink``
halves a run's model (as a release does) and cuts it into pieces; ``join`` puts it together
and verifies it. Nothing here holds face data in the repository: parts go to ignored folders.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from recognizer.artifact import ModelArtifact
from recognizer.preprocess import AlignmentRecipe

from . import teacher
from .data import crops_cache_path, discover

MANIFEST = "manifest.json"
TEACHER_FILE = "teacher.npz"
CROPS_FILE = "crops.npz"


class BundleError(RuntimeError):
    """A bundle that does not rebuild the caches it was packed from (missing part, other key)."""


def _encode(crop: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".webp", np.ascontiguousarray(crop[:, :, ::-1]), [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise BundleError("WebP encoding failed (OpenCV built without WebP?)")
    return buf.tobytes()


def _decode(buf: np.ndarray) -> np.ndarray:
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is None:
        raise BundleError("a crop in the bundle did not decode (OpenCV built without WebP?)")
    return image[:, :, ::-1]


def _write_part(folder: Path, rows: list[tuple[int, int, bytes]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(b) for _, _, b in rows], np.int64)
    np.savez(folder / CROPS_FILE, source=np.array([s for s, _, _ in rows], np.int16),
             row=np.array([r for _, r, _ in rows], np.int32), offsets=np.concatenate([[0], np.cumsum(lengths)]),
             blob=np.frombuffer(b"".join(b for _, _, b in rows), np.uint8))


def pack(sources: Sequence[str | os.PathLike], input_size: tuple[int, int], out: str | os.PathLike,
         cache_dir: str | os.PathLike = ".cache", teacher_cache: str | os.PathLike = ".cache",
         part_mib: float = 55.0, quality: int = 90) -> dict:
    """Write ``out/p0, out/p1, ...`` (each under ``part_mib``); p0 holds the manifest and teacher."""
    out = Path(out)
    recipe = AlignmentRecipe(input_size=tuple(input_size))
    manifest: dict = {"input_size": list(input_size), "quality": quality, "sources": []}
    teacher_arrays: dict[str, np.ndarray] = {}
    encoded: list[tuple[int, int, bytes]] = []
    for s, source in enumerate(sources):
        dataset = discover(source)
        cache = crops_cache_path(dataset, recipe, cache_dir)
        if not cache.is_file():
            raise BundleError(f"no cached crops for {source} at {cache}: run `trainer fit` on it once first")
        with np.load(cache) as data:
            crops, ok = data["crops"], data["ok"]
        key = teacher.cache_key(dataset, recipe.crop_box)
        taught: dict[str, str] = {}  # every view cached here travels (a mirror run needs its own)
        for views in teacher.TEACHER_VIEWS:
            vectors, have = teacher.load(dataset, teacher_cache, recipe, views)  # its shards, merged
            if have.any():
                view_key = teacher.cache_key(dataset, recipe.crop_box, views)
                teacher_arrays[f"{view_key}:vectors"] = vectors.astype(np.float16)
                teacher_arrays[f"{view_key}:done"] = have
                taught[views] = view_key
        root = dataset.root.resolve()
        ident = root / "identity_CelebA.txt"
        manifest["sources"].append({
            "root": str(root), "layout": dataset.layout, "crops_cache": cache.name, "teacher_key": key,
            "teacher_views": taught, "ok": np.flatnonzero(ok).tolist(),
            "paths": [str(p.resolve().relative_to(root)) for p in dataset.paths],
            "identity_file": ident.read_text() if dataset.layout == "celeba" else None})
        for i in tqdm(np.flatnonzero(ok), desc=f"webp {Path(source).name}", unit="crop", mininterval=5):
            encoded.append((s, int(i), _encode(crops[i], quality)))
    out.mkdir(parents=True, exist_ok=True)
    first = out / "p0"
    first.mkdir(exist_ok=True)
    (first / MANIFEST).write_text(json.dumps(manifest))
    np.savez(first / TEACHER_FILE, **teacher_arrays)
    budget = int(part_mib * 2**20)
    used = (first / MANIFEST).stat().st_size + (first / TEACHER_FILE).stat().st_size
    part, rows, sizes = 0, [], []
    for item in encoded:
        if rows and used + len(item[2]) > budget:
            _write_part(out / f"p{part}", rows)
            sizes.append(sum(f.stat().st_size for f in (out / f"p{part}").iterdir()))
            part, rows, used = part + 1, [], 0
        rows.append(item)
        used += len(item[2]) + 6
    _write_part(out / f"p{part}", rows)
    sizes.append(sum(f.stat().st_size for f in (out / f"p{part}").iterdir()))
    return {"parts": [f"p{i}" for i in range(part + 1)], "mib": [round(b / 2**20, 1) for b in sizes],
            "crops": len(encoded), "taught_sources": sum(bool(src["teacher_views"]) for src in manifest["sources"]),
            "teacher_caches": len(teacher_arrays) // 2}


def unpack(parts: Sequence[str | os.PathLike], cache_dir: str | os.PathLike = ".cache",
           teacher_cache: str | os.PathLike = ".cache") -> dict:
    """Rebuild the packed caches (and the placeholder sources their keys are made of). A cache
    that already exists is kept, never overwritten: on the machine the bundle came from it holds
    the lossless crops, and a second unpack there is a retry."""
    folders = [Path(p) for p in parts]
    heads = [f for f in folders if (f / MANIFEST).is_file()]
    if len(heads) != 1:
        raise BundleError(f"expected exactly one part holding {MANIFEST} among {', '.join(map(str, folders))}")
    manifest = json.loads((heads[0] / MANIFEST).read_text())
    recipe = AlignmentRecipe(input_size=tuple(manifest["input_size"]))
    height, width = recipe.input_size
    crops = [np.zeros((len(src["paths"]), height, width, 3), np.uint8) for src in manifest["sources"]]
    filled = [np.zeros(len(src["paths"]), bool) for src in manifest["sources"]]
    for folder in folders:
        with np.load(folder / CROPS_FILE) as part:
            source, row, offsets, blob = part["source"], part["row"], part["offsets"], part["blob"]
        for j in tqdm(range(len(row)), desc=f"decode {folder.name}", unit="crop", mininterval=5):
            crops[source[j]][row[j]] = _decode(blob[offsets[j]:offsets[j + 1]])
            filled[source[j]][row[j]] = True
    with np.load(heads[0] / TEACHER_FILE) as saved:
        teacher_arrays = {k: saved[k] for k in saved.files}
    kept: list[str] = []
    for s, src in enumerate(manifest["sources"]):
        ok = np.zeros(len(src["paths"]), bool)
        ok[src["ok"]] = True
        if not np.array_equal(ok, filled[s]):
            raise BundleError(f"{src['root']}: {int((ok & ~filled[s]).sum())} crops missing: a part was not given")
        root = Path(src["root"])
        root.mkdir(parents=True, exist_ok=True)
        if src["identity_file"] is not None:
            (root / "identity_CelebA.txt").write_text(src["identity_file"])
        for rel in src["paths"]:
            path = root / rel
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
        dataset = discover(root)
        cache = crops_cache_path(dataset, recipe, cache_dir)
        key = teacher.cache_key(dataset, recipe.crop_box)
        if cache.name != src["crops_cache"] or key != src["teacher_key"]:
            raise BundleError(f"{root}: the rebuilt image list gives other cache keys ({cache.name}, {key}) than "
                              f"where it was packed ({src['crops_cache']}, {src['teacher_key']})")
        if cache.is_file():
            kept.append(cache.name)
        else:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, crops=crops[s], ok=ok)
            os.replace(tmp, cache)
        for views, view_key in src["teacher_views"].items():
            if view_key != teacher.cache_key(dataset, recipe.crop_box, views):
                raise BundleError(f"{root}: its {views} teacher vectors were packed under another key")
            if not list((Path(teacher_cache) / "teacher").glob(f"{view_key}-*of*.npz")):
                target = Path(teacher_cache) / "teacher" / f"{view_key}-0of1.npz"
                teacher._save(target, teacher_arrays[f"{view_key}:vectors"].astype(np.float32),
                              teacher_arrays[f"{view_key}:done"])
    return {"sources": [s["root"] for s in manifest["sources"]], "crops": int(sum(f.sum() for f in filled)),
            "kept_existing": kept}


def shrink(model: str | os.PathLike, out: str | os.PathLike, piece_mib: float = 15.0) -> dict:
    """The model with fp16 weights (what a release holds), cut into ``out/model.part-K`` pieces."""
    from .release import half_precision

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    whole = out / "model.fp16.pt"
    half_precision(ModelArtifact.load(model)).save(whole)
    data = whole.read_bytes()
    whole.unlink()
    step = int(piece_mib * 2**20)
    pieces = [out / f"model.part-{k}" for k in range((len(data) + step - 1) // step)]
    for k, piece in enumerate(pieces):
        piece.write_bytes(data[k * step:(k + 1) * step])
    return {"pieces": [p.name for p in pieces], "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def join(folder: str | os.PathLike, out: str | os.PathLike) -> str:
    """Put ``model.part-K`` pieces back together; returns the model's version (it is verified)."""
    pieces = sorted(Path(folder).glob("model.part-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    if not pieces:
        raise BundleError(f"no model.part-K pieces in {folder}")
    Path(out).write_bytes(b"".join(p.read_bytes() for p in pieces))
    return ModelArtifact.load(out).version
