"""Our model side by side with face_recognition (dlib's ResNet, 128-d), same images, same run.

(a) celeba_ir open-set protocol: TPR at FPR 0.5 ... 0.001 (positives: two query images of one
    id; negatives: query x distractor). Ours embeds the crops exactly as
    ``trainer.evaluate.evaluate_celeba_ir`` does (``crop_mode="crop"``, flip-averaged); dlib gets
    each crop with the whole crop as its known face location.
(b) photos/master.csv labelled pairs: both detect + embed (largest face); score = cosine (ours)
    or negative euclidean distance (dlib). ROC AUC, accuracy at the best threshold for these
    pairs (optimistic: chosen on the test pairs) and at each method's own default threshold
    (ours: the model's calibrated threshold; dlib: distance 0.6).
(c) closed-set top-1/top-5 on held-out celeba1k images of training identities (the model run's
    own split, rebuilt and checked against splits.json): gallery = mean of each identity's
    training-image embeddings (ours: normalised mean + cosine, the product's definition; dlib:
    plain mean + euclidean, its own metric); probes = the held-out images.
(d) per-face embedding latency (median, p95), one face per call, and detect + embed of a photo.

Images are decoded once with ``recognizer.images.load_image`` (EXIF-aware) and the same array
goes to both. Needs ``pip install -r bench/requirements.txt``.

    OMP_NUM_THREADS=1 python -m bench.accuracy_vs_dlib --quick --model /tmp/model.pt
"""
from __future__ import annotations

import argparse
import csv
import pickle
import time
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

from recognizer import ModelArtifact, Recognizer
from recognizer.images import load_image
from recognizer.preprocess import AlignmentRecipe
from trainer import bootstrap, metrics
from trainer.data import parse_shard
from trainer.evaluate import CELEBA_IR_FPRS
from trainer.teacher import import_dlib

from . import common
from .datasets import model_split

DLIB_DEFAULT_DISTANCE = 0.6  # face_recognition.compare_faces' tolerance


class Dlib:
    """face_recognition's pipeline: HOG detector, 5-point landmarks, ResNet embedding."""

    def __init__(self, use_cache: bool = True, cache_writer: str = "") -> None:
        dlib, face_recognition = import_dlib("dlib", "face_recognition")
        self.fr = face_recognition
        self.version = f"dlib {dlib.__version__}, face_recognition {metadata.version('face_recognition')}"
        self.cache = DlibCache(self.version, enabled=use_cache, writer=cache_writer)

    def embed_at(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """Embedding of the face in ``box`` = (x0, y0, x1, y1)."""
        x0, y0, x1, y1 = box
        return self.fr.face_encodings(image, known_face_locations=[(y0, x1, y1, x0)])[0]

    def embed_crop(self, image: np.ndarray) -> np.ndarray:
        return self.embed_at(image, (0, 0, image.shape[1], image.shape[0]))

    def detect_embed(self, image: np.ndarray) -> np.ndarray | None:
        """Largest face found by the HOG detector (1 upsample, the library default)."""
        locs = self.fr.face_locations(image)
        if not locs:
            return None
        top, right, bottom, left = max(locs, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        return self.embed_at(image, (left, top, right, bottom))


class DlibCache:
    """dlib's embeddings of image files, kept in ``common.cache_dir()``.

    dlib is deterministic and costs ~0.13 s a face, about an hour for a full run, while a new
    model of ours changes only our side. With the cache a rerun recomputes ours alone, and
    ``--dlib-cache-only`` fills it ahead of time (before our model exists). A key names the
    file (path, size, mtime) and how dlib was given the face, so a changed file or box misses."""

    def __init__(self, version: str, enabled: bool = True, writer: str = "") -> None:
        tag = "".join(c if c.isalnum() else "-" for c in version)
        # every process writes its own file (``writer``) and reads them all, so shards can fill it together
        self.path = common.cache_dir() / f"dlib-embeddings-{tag}{writer}.pkl"
        self.enabled = enabled
        self.hits = 0
        self._new = 0
        self.table: dict[str, np.ndarray] = {}
        for path in sorted(common.cache_dir().glob(f"dlib-embeddings-{tag}*.pkl")) if enabled else []:
            with open(path, "rb") as fh:
                self.table.update(pickle.load(fh))

    @staticmethod
    def key(path: Path, how: str) -> str:
        st = path.stat()
        return f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}|{how}"

    def get(self, key: str) -> np.ndarray | None:
        vec = self.table.get(key) if self.enabled else None
        self.hits += vec is not None
        return vec

    def put(self, key: str, vec: np.ndarray) -> None:
        if not self.enabled:
            return
        self.table[key] = vec
        self._new += 1
        if self._new >= 1000:  # a killed run keeps most of its work
            self.save()

    def save(self) -> None:
        if not self.enabled or not self._new:
            return
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(self.table, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(self.path)
        self._new = 0


# ---- (a) celeba_ir -------------------------------------------------------------------------------

def celeba_ir(rec: Recognizer, dl: Dlib, root: Path, args: argparse.Namespace) -> dict:
    with open(root / "celebA_anno_query.csv") as fh:
        rows = list(csv.DictReader(fh))
    distractors = sorted((root / "celebA_distractors").iterdir())
    rng = np.random.default_rng(0)
    if args.quick:  # up to 10 images each of random identities, so there are positive pairs
        picked: list[dict] = []
        for ident in rng.permutation(sorted({r["id"] for r in rows})):
            picked += [r for r in rows if r["id"] == ident][:10]
            if len(picked) >= args.ir_queries:
                break
        rows = picked
        distractors = sorted(rng.choice(distractors, args.ir_distractors, replace=False).tolist())
    queries = [root / "celebA_query" / r["img"] for r in rows]
    ids = np.array([r["id"] for r in rows])
    ours, theirs, seconds = embed_both(rec, dl, queries + distractors, "crop")
    nq = len(queries)
    i, j = np.triu_indices(nq, k=1)
    same = ids[i] == ids[j]
    out: dict = {"queries": nq, "query_identities": int(len(set(ids))), "distractors": len(distractors),
                 "positives": int(same.sum()), "negatives": nq * len(distractors), "embed_seconds": seconds}
    paired = []
    for name, emb in (("ours", ours), ("dlib", theirs)):
        q, d = emb[:nq], emb[nq:]
        pos, neg = _pair_scores(name, q[i[same]], q[j[same]]), _scores(name, q, d).ravel()
        out[name] = {"roc_auc": metrics.roc_auc(pos, neg),
                     **{f"tpr@fpr={f:g}": metrics.tpr_at_fpr(pos, neg, f)[0] for f in CELEBA_IR_FPRS}}
        out[f"_roc_{name}"] = metrics.roc_curve(pos, neg)
        paired.append(np.concatenate([pos, neg]))
    # the same people resampled for both: is the gap more than the luck of 51 query identities?
    table = bootstrap.query_distractor_table(ids, len(distractors))
    out["ours_minus_dlib"] = {f"tpr@fpr={f:g}": bootstrap.compare_tar(table, *paired, f, args.rounds)
                              for f in CELEBA_IR_FPRS}
    return out


def embed_both(rec: Recognizer | None, dl: Dlib, paths: list[Path], crop_mode: str,
               box: tuple[int, int, int, int] | None = None,
               dlib_detect: bool = False) -> tuple[np.ndarray | None, np.ndarray, dict]:
    """Both embeddings of already-aligned images, decoding each once (streamed: 20k decoded
    frames would not fit in memory). dlib gets the whole image as the face, or ``box``, or
    (``dlib_detect``) its own detection with ``box`` as the fallback; its embeddings come from
    ``dl.cache`` when there. ``rec=None`` computes dlib's alone (to fill the cache)."""
    how = f"detect-or-box={list(box)}" if dlib_detect else (f"box={list(box)}" if box else "whole-image")
    crops, theirs = [], []
    seconds, fallbacks = {"ours": 0.0, "dlib": 0.0}, 0
    for path in common.progress(paths, f"embed ({crop_mode})"):
        key = dl.cache.key(path, how)
        vec = dl.cache.get(key)
        if rec is None and vec is not None:
            theirs.append(vec)
            continue
        image = load_image(path)
        if rec is not None:
            start = time.perf_counter()
            crops.append(rec.prepare(image, crop_mode))
            seconds["ours"] += time.perf_counter() - start
        if vec is None:
            start = time.perf_counter()
            vec = dl.detect_embed(image) if dlib_detect else None
            if vec is None:
                fallbacks += dlib_detect
                vec = dl.embed_at(image, box) if box else dl.embed_crop(image)
            seconds["dlib"] += time.perf_counter() - start
            dl.cache.put(key, vec)
        theirs.append(vec)
    dl.cache.save()
    ours = None
    if rec is not None:
        start = time.perf_counter()
        ours = rec.embed(np.stack(crops))
        seconds["ours"] += time.perf_counter() - start
    seconds["dlib_detection_fallbacks"] = fallbacks
    seconds["dlib_from_cache"] = dl.cache.hits
    dl.cache.hits = 0
    return ours, np.stack(theirs), seconds  # dlib: float64, distances stay exact


def fill_dlib_cache(dl: Dlib, data: Path, shard: int = 0, shards: int = 1) -> dict:
    """dlib's embeddings of every image (a) and (c) can ask for, before our model exists: the
    celeba_ir crops, and every celeba1k frame with the default recipe's crop box (which split a
    model run makes is not known yet; the open-set identities are ~5% extra work). Shard k of n
    takes every n-th image from k: n one-thread processes fill it n times faster."""
    from trainer.data import discover

    ir = data / "celeba_ir"
    paths = sorted((ir / "celebA_query").iterdir()) + sorted((ir / "celebA_distractors").iterdir())
    paths = paths[shard::shards]
    sec_a = embed_both(None, dl, paths, "crop")[2]
    frames = [Path(p) for p in discover(data / "celeba1k").paths][shard::shards]
    sec_c = embed_both(None, dl, frames, "frame", box=AlignmentRecipe().crop_box)[2]
    return {"celeba_ir_images": len(paths), "celeba1k_images": len(frames),
            "dlib_seconds": sec_a["dlib"] + sec_c["dlib"], "cache": str(dl.cache.path)}


def _pair_scores(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row i of ``a`` against row i of ``b``: cosine (ours) or -euclidean distance (dlib)."""
    return np.sum(a * b, axis=1) if name == "ours" else -np.linalg.norm(a - b, axis=1)


def _scores(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Every row of ``a`` against every row of ``b`` (as a matrix, without an n*m*d temporary)."""
    if name == "ours":
        return a @ b.T
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * (a @ b.T)
    return -np.sqrt(np.maximum(sq, 0))


# ---- (b) labelled photo pairs --------------------------------------------------------------------

def photo_pairs(rec: Recognizer, dl: Dlib, root: Path, args: argparse.Namespace) -> dict:
    with open(root / "master.csv") as fh:
        rows = list(csv.DictReader(fh))
    if args.quick:  # images of some positive pairs first, then every labelled pair among them
        rng = np.random.default_rng(0)
        chosen: list[str] = []
        positives = [r for r in rows if r["Decision"] == "Yes"]
        for k in rng.permutation(len(positives)):
            chosen += [f for f in (positives[k]["file_x"], positives[k]["file_y"]) if f not in chosen]
            if len(chosen) >= args.pair_images:
                break
        rows = [r for r in rows if r["file_x"] in chosen and r["file_y"] in chosen]
    files = sorted({r["file_x"] for r in rows} | {r["file_y"] for r in rows})
    ours: dict[str, np.ndarray | None] = {}
    theirs: dict[str, np.ndarray | None] = {}
    seconds = {"ours": 0.0, "dlib": 0.0}
    for f in files:
        image = _fit(load_image(root / f), args.max_side)
        start = time.perf_counter()
        found = rec.analyze(image)
        ours[f] = found[0].embedding if found else None
        seconds["ours"] += time.perf_counter() - start
        start = time.perf_counter()
        theirs[f] = dl.detect_embed(image)
        seconds["dlib"] += time.perf_counter() - start
    same = np.array([r["Decision"] == "Yes" for r in rows])
    out: dict = {"pairs": len(rows), "positives": int(same.sum()), "images": len(files),
                 "max_side": args.max_side or None, "detect_embed_seconds": seconds}
    for name, emb, default in (("ours", ours, rec.threshold), ("dlib", theirs, -DLIB_DEFAULT_DISTANCE)):
        s = np.array([float(_pair_scores(name, emb[r["file_x"]][None], emb[r["file_y"]][None])[0])
                      if emb[r["file_x"]] is not None and emb[r["file_y"]] is not None else -np.inf for r in rows])
        candidates = np.concatenate([np.unique(s), [np.inf]])
        accs = np.array([np.mean((s >= t) == same) for t in candidates])
        best = int(np.argmax(accs))
        out[name] = {"roc_auc": metrics.roc_auc(s[same], s[~same]) if same.any() and (~same).any() else float("nan"),
                     "accuracy_best_threshold": float(accs[best]), "best_threshold": float(candidates[best]),
                     "accuracy_default_threshold": float(np.mean((s >= default) == same)),
                     "default_threshold": float(default), "images_without_face": sum(v is None for v in emb.values())}
        out[f"_roc_{name}"] = metrics.roc_curve(s[same], s[~same])
    return out


def _fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink so the longer side is at most ``max_side`` (0: leave as is); both methods get this."""
    scale = max_side / max(image.shape[:2]) if max_side else 1.0
    if scale >= 1.0:
        return image
    return cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                      interpolation=cv2.INTER_AREA)


# ---- (c) closed-set identification ---------------------------------------------------------------

def closed_set(rec: Recognizer, dl: Dlib, celeba: Path, args: argparse.Namespace) -> dict:
    splits_json = Path(args.splits) if args.splits else Path(args.model).parent / "splits.json"
    split = model_split(rec.artifact, celeba, splits_json)
    print(f"(c) {split.describe()}")
    if split.mismatches:  # a different split would score ours on images it trained on
        raise SystemExit("(c) the rebuilt split does not match the run's splits.json; refusing to measure")
    labels, sp = split.labels, split.splits
    classes = np.unique(labels[sp.train])  # every training identity is in the gallery
    rng = np.random.default_rng(0)
    if args.identities:  # quick: a random subset of those that have held-out images
        classes = np.sort(rng.choice(np.unique(labels[sp.closed_val]), args.identities, replace=False))
    gallery, probes = [], []
    for c in classes:
        train_c = sp.train[labels[sp.train] == c]
        gallery += (rng.permutation(train_c)[: args.gallery_per_identity] if args.gallery_per_identity
                    else train_c).tolist()
        probes += sp.closed_val[labels[sp.closed_val] == c].tolist()
    idx = np.array(gallery + probes)
    ng = len(gallery)
    box = rec.recipe.crop_box
    ours, theirs, seconds = embed_both(rec, dl, [split.dataset.paths[i] for i in idx], "frame", box=box,
                                       dlib_detect=args.dlib_locate == "detect")
    fallbacks = seconds.pop("dlib_detection_fallbacks")
    gl, pl = labels[idx[:ng]], labels[idx[ng:]]
    out: dict = {"identities": len(classes), "gallery_images": ng, "probes": len(probes),
                 "split_check": split.describe(), "split_mismatches": split.mismatches,
                 "dlib_face_location": (f"its own HOG detector ({fallbacks} images without a detection fell back "
                                        f"to the crop box)" if args.dlib_locate == "detect"
                                        else f"known location = the recipe's crop box {list(box)} (x0,y0,x1,y1)"),
                 "embed_seconds": seconds}
    out["ours"] = _topk(ours[:ng], gl, ours[ng:], pl, cosine=True)
    out["dlib"] = _topk(theirs[:ng], gl, theirs[ng:], pl, cosine=False)
    return out


def _topk(gallery: np.ndarray, gl: np.ndarray, probes: np.ndarray, pl: np.ndarray, cosine: bool) -> dict:
    """Top-1/top-5 against per-identity means: cosine to the normalised mean, or euclidean
    distance to the plain mean (dlib's embeddings are compared by distance, not angle)."""
    if cosine:
        return metrics.closed_set_accuracy(gallery, gl, probes, pl)
    classes = np.unique(gl)
    means = np.stack([gallery[gl == c].mean(0) for c in classes])
    ranked = classes[np.argsort(-_scores("dlib", probes, means), axis=1)]
    return {f"top{k}": float(np.mean((ranked[:, :k] == pl[:, None]).any(axis=1))) for k in (1, 5)}


# ---- (d) latency -----------------------------------------------------------------------------------

def latency(rec: Recognizer, dl: Dlib, face: Path, photo: Path, args: argparse.Namespace) -> dict:
    crop_img = load_image(face)
    crop = rec.prepare(crop_img, "crop")[None]
    photo_img = _fit(load_image(photo), args.max_side)
    batch = np.repeat(crop, 64, axis=0)
    r = args.repeats
    return {
        "face": str(face.name), "photo": f"{photo.name} {photo_img.shape[1]}x{photo_img.shape[0]}",
        "embed one face": {"ours": common.stats(common.time_calls(lambda: rec.embed(crop), r, 2)),
                           "dlib": common.stats(common.time_calls(lambda: dl.embed_crop(crop_img), r, 2))},
        "embed, per face in a batch of 64": {
            "ours": common.stats([t / 64 for t in common.time_calls(lambda: rec.embed(batch), max(3, r // 5), 1)]),
            "dlib": None},  # face_recognition has no batching: the same as one face
        "detect + embed one photo": {
            "ours": common.stats(common.time_calls(lambda: rec.analyze(photo_img), max(3, r // 5), 1)),
            "dlib": common.stats(common.time_calls(lambda: dl.detect_embed(photo_img), max(3, r // 5), 1))},
    }


# ---- report ---------------------------------------------------------------------------------------

def _paired(row: dict) -> str:
    d = row["a_minus_b"]
    return f"{d['point']:+.3f} ({d['ci90'][0]:+.3f} to {d['ci90'][1]:+.3f}; {row['a_ahead']:.0%})"


def tables(res: dict) -> str:
    parts = []
    if "celeba_ir" in res:
        a = res["celeba_ir"]
        rows = [[f"TPR @ FPR {f:g}", common.num(a["ours"][f"tpr@fpr={f:g}"]), common.num(a["dlib"][f"tpr@fpr={f:g}"]),
                 common.winner(a["ours"][f"tpr@fpr={f:g}"], a["dlib"][f"tpr@fpr={f:g}"]),
                 _paired(a["ours_minus_dlib"][f"tpr@fpr={f:g}"])] for f in CELEBA_IR_FPRS]
        rows.append(["ROC AUC", common.num(a["ours"]["roc_auc"], 4), common.num(a["dlib"]["roc_auc"], 4),
                     common.winner(a["ours"]["roc_auc"], a["dlib"]["roc_auc"]), ""])
        parts.append(f"(a) celeba_ir: {a['queries']} query images of {a['query_identities']} ids, {a['distractors']} "
                     f"distractors; {a['positives']} positive / {a['negatives']} negative pairs\n\n"
                     + common.markdown_table(["metric", "ours", "dlib", "winner",
                                              "ours - dlib, 90% over resampled query people (ours ahead in)"], rows))
    if "pairs" in res:
        b = res["pairs"]
        rows = [["ROC AUC", common.num(b["ours"]["roc_auc"], 4), common.num(b["dlib"]["roc_auc"], 4),
                 common.winner(b["ours"]["roc_auc"], b["dlib"]["roc_auc"])]]
        for key, thr, label in (
                ("accuracy_best_threshold", "best_threshold", "accuracy, best threshold for these pairs"),
                ("accuracy_default_threshold", "default_threshold", "accuracy, own default threshold")):
            rows.append([label, f"{b['ours'][key]:.3f} (cos >= {b['ours'][thr]:.3f})",
                         f"{b['dlib'][key]:.3f} (dist <= {-b['dlib'][thr]:.3f})",
                         common.winner(b["ours"][key], b["dlib"][key])])
        rows.append(["images with no face found", b["ours"]["images_without_face"], b["dlib"]["images_without_face"],
                     common.winner(b["ours"]["images_without_face"], b["dlib"]["images_without_face"],
                                   higher_is_better=False)])
        parts.append(f"(b) photos/master.csv: {b['pairs']} pairs ({b['positives']} same person) over {b['images']} "
                     f"photos, detect + embed, longest side <= {b['max_side'] or 'original'}\n\n"
                     + common.markdown_table(["metric", "ours", "dlib", "winner"], rows))
    if "closed_set" in res:
        c = res["closed_set"]
        rows = [[f"top-{k}", common.num(c["ours"][f"top{k}"]), common.num(c["dlib"][f"top{k}"]),
                 common.winner(c["ours"][f"top{k}"], c["dlib"][f"top{k}"])] for k in (1, 5)]
        parts.append(f"(c) closed-set, celeba1k held-out images: {c['identities']} identities, {c['gallery_images']} "
                     f"gallery images, {c['probes']} probes; dlib face location: {c['dlib_face_location']}\n\n"
                     + common.markdown_table(["metric", "ours", "dlib", "winner"], rows))
    if "latency" in res:
        d = res["latency"]
        rows = []
        for what in ("embed one face", "embed, per face in a batch of 64", "detect + embed one photo"):
            o, t = d[what]["ours"], d[what]["dlib"] or d["embed one face"]["dlib"]
            rows.append([what, common.ms(o["median"]), common.ms(o["p95"]), common.ms(t["median"]),
                         common.ms(t["p95"]), common.ratio(t["median"], o["median"]),
                         common.winner(o["median"], t["median"], higher_is_better=False)])
        parts.append(f"(d) latency, {res['threads']} torch thread(s); face {d['face']}, photo {d['photo']}; "
                     "dlib has no batching, so its batch row repeats its one-face time\n\n"
                     + common.markdown_table(["what", "ours ms (median)", "p95", "dlib ms (median)", "p95",
                                              "ours faster by", "winner"], rows))
    return "\n\n".join(parts)


def plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], args: argparse.Namespace) -> Path:
    """ROC curves, celeba_ir on a log FPR axis (its table stops at 1e-3), photo pairs on a linear one."""
    sections = sorted({name.split()[0] for name in curves})
    fig, axes = common.new_figure(len(sections), size=(5.5, 4.5))
    axes = np.atleast_1d(axes)
    for ax, sec in zip(axes, sections, strict=True):
        for who, style in (("ours", "-"), ("dlib", "--")):
            if f"{sec} {who}" in curves:
                fpr, tpr = curves[f"{sec} {who}"]
                x = np.maximum(fpr, 1e-5) if sec == "celeba_ir" else fpr
                ax.plot(x, tpr, style, label=who, drawstyle="steps-post")
        if sec == "celeba_ir":
            ax.set_xscale("log")
            ax.set_xlim(1e-4, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{sec} ROC")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower right")
    return common.save_figure(fig, "accuracy_vs_dlib", args)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--model", default=str(common.DEFAULT_MODEL),
                   help="model artifact (copy runs/<run>/model.pt first: it is rewritten every epoch)")
    p.add_argument("--splits", default=None, help="the run's splits.json (default: next to --model)")
    p.add_argument("--dlib-locate", choices=["box", "detect"], default="box",
                   help="(c): give dlib the recipe's crop box as the face location, or let it detect")
    p.add_argument("--max-side", type=int, default=None, help="(b),(d): shrink photos to this longer side "
                   "for both methods (quick: 800; full: 0 = original size)")
    p.add_argument("--parts", default="a,b,c,d", help="which of a,b,c,d to run")
    p.add_argument("--rounds", type=int, default=400, help="(a): identity resamplings for the paired intervals")
    p.add_argument("--gallery-per-identity", type=int, default=None,
                   help="(c): training images per identity in the gallery (quick 2; full 0 = all)")
    p.add_argument("--no-dlib-cache", action="store_true",
                   help="recompute dlib's embeddings instead of reading them from $BENCH_CACHE")
    p.add_argument("--dlib-cache-only", action="store_true",
                   help="only fill the dlib embedding cache for (a) and (c) (needs no model of ours), then exit")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="K/N", help="with --dlib-cache-only: K/N, this process's share (run N at once)")
    args = p.parse_args(argv)
    q = args.quick
    args.ir_queries, args.ir_distractors, args.pair_images = 50, 50, 8  # quick only
    args.identities = 15 if q else 0
    args.gallery_per_identity = args.gallery_per_identity if args.gallery_per_identity is not None else (2 if q else 0)
    args.max_side = args.max_side if args.max_side is not None else (800 if q else 0)
    args.repeats = 8 if q else 100
    parts = set(args.parts.split(","))
    data = Path(args.data)
    if args.dlib_cache_only:
        common.set_threads(args.threads)
        shard, shards = args.shard
        dl = Dlib(cache_writer=f"-shard{shard}of{shards}" if shards > 1 else "")
        print(f"filling {dl.cache.path} ({len(dl.cache.table)} embeddings cached already)")
        print(fill_dlib_cache(dl, data, shard, shards))
        return 0
    if not Path(args.model).is_file():
        raise SystemExit(f"no model at {args.model}: train one (python -m trainer fit) or pass --model")
    if not data.is_dir():
        raise SystemExit(f"no face data at {data}: this benchmark needs the real images (--data or $FACE_DATA)")
    common.set_threads(args.threads)
    start = time.perf_counter()
    rec = Recognizer(ModelArtifact.load(args.model))
    dl = Dlib(use_cache=not args.no_dlib_cache)
    print(f"ours: model {rec.version} (threshold {rec.threshold:.4f}); theirs: {dl.version}; "
          f"{'QUICK (subsampled)' if q else 'full'} run")
    res: dict = {"model_version": rec.version, "dlib": dl.version, "threads": args.threads}
    steps = [("a", "celeba_ir", lambda: celeba_ir(rec, dl, data / "celeba_ir", args)),
             ("b", "pairs", lambda: photo_pairs(rec, dl, data / "photos", args)),
             ("c", "closed_set", lambda: closed_set(rec, dl, data / "celeba1k", args)),
             ("d", "latency", lambda: latency(rec, dl, sorted((data / "celeba_ir" / "celebA_query").iterdir())[0],
                                              data / "photos" / "img10.jpg", args))]
    for key, name, fn in steps:
        if key in parts:
            t0 = time.perf_counter()
            res[name] = fn()
            print(f"  ({key}) {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    curves = {f"{sec} {who}": res[sec].pop(f"_roc_{who}") for sec in ("celeba_ir", "pairs") if sec in res
              for who in ("ours", "dlib")}
    png = plot(curves, args) if curves else None
    return common.finish("accuracy_vs_dlib", args, res, tables(res), start, [png])


if __name__ == "__main__":
    raise SystemExit(main())
