"""``python -m trainer evaluate``: LFW pairs, the celeba_ir open-set protocol, identification.

Every protocol embeds images with the serving :class:`recognizer.Recognizer` (same alignment,
same precision, same flip-averaging as production) and scores them with :mod:`trainer.metrics`.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recognizer import Recognizer
from recognizer.errors import FaceServiceError

from . import metrics

CELEBA_IR_FPRS = (0.5, 0.2, 0.1, 0.05, 0.01, 0.001)


def parse_lfw_pairs(path: str | os.PathLike) -> tuple[list[tuple[str, int, str, int]], np.ndarray, np.ndarray]:
    """LFW View 2 ``pairs.txt``: header ``folds pairs_per_class`` then, per fold, that many
    same-person lines (``name n1 n2``) and that many different-person lines (``a n1 b n2``).
    Returns (pairs, same flags, fold index)."""
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path} is empty")
    header = lines[0]
    if len(header) == 2 and all(h.isdigit() for h in header):
        folds, per_class = int(header[0]), int(header[1])
        body = lines[1:]
    elif len(header) == 1 and header[0].isdigit():
        folds, per_class, body = 1, int(header[0]), lines[1:]
    else:
        raise ValueError(f"{path}: first line must be '<folds> <pairs per class>', got {' '.join(header)!r}")
    pairs, same = [], []
    for parts in body:
        if len(parts) == 3:
            pairs.append((parts[0], int(parts[1]), parts[0], int(parts[2])))
            same.append(True)
        elif len(parts) == 4:
            pairs.append((parts[0], int(parts[1]), parts[2], int(parts[3])))
            same.append(False)
        else:
            raise ValueError(f"{path}: cannot parse pair line {' '.join(parts)!r}")
    if len(pairs) != folds * per_class * 2:
        raise ValueError(f"{path}: header promises {folds * per_class * 2} pairs, found {len(pairs)}")
    fold = np.arange(len(pairs)) // (2 * per_class)
    return pairs, np.array(same), fold


def lfw_path(root: Path, name: str, number: int) -> Path:
    return root / name / f"{name}_{number:04d}.jpg"


class EmbeddingCache:
    """Embeds each distinct image once. In ``detect`` mode the largest face is used; an image
    with no face falls back to its centre crop, and such failures are counted."""

    def __init__(self, recognizer: Recognizer, crop_mode: str) -> None:
        self.recognizer, self.crop_mode = recognizer, crop_mode
        self.vectors: dict[str, np.ndarray] = {}
        self.no_face = 0

    def add(self, paths: list[Path], desc: str) -> None:
        todo = [p for p in dict.fromkeys(map(str, paths)) if p not in self.vectors]
        batch: list[tuple[str, np.ndarray]] = []
        for path in tqdm(todo, desc=desc, unit="img", mininterval=5):
            batch.append((path, self._crop(path)))
            if len(batch) == 128:
                self._flush(batch)
        self._flush(batch)

    def _crop(self, path: str) -> np.ndarray:
        rec = self.recognizer
        if self.crop_mode != "detect":
            return rec.prepare(path, self.crop_mode)
        image = rec.load(path)
        faces = rec.detector.detect(image)
        if faces:
            return rec.align(image, faces[:1])[0]
        self.no_face += 1
        h, w = image.shape[:2]
        side = min(h, w)
        centre = image[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
        from recognizer.preprocess import resize_to_input

        return resize_to_input(centre, rec.recipe)

    def _flush(self, batch: list) -> None:
        if batch:
            vecs = self.recognizer.embed(np.stack([c for _, c in batch]))
            self.vectors.update({p: v for (p, _), v in zip(batch, vecs)})
            batch.clear()

    def __getitem__(self, path) -> np.ndarray:
        return self.vectors[str(path)]


def evaluate_lfw(recognizer: Recognizer, root: Path, pairs_file: Path, crop_mode: str) -> dict:
    pairs, same, folds = parse_lfw_pairs(pairs_file)
    cache = EmbeddingCache(recognizer, crop_mode)
    left = [lfw_path(root, a, i) for a, i, _, _ in pairs]
    right = [lfw_path(root, b, j) for _, _, b, j in pairs]
    missing = [str(p) for p in left + right if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} LFW images missing, e.g. {missing[0]}")
    cache.add(left + right, "lfw")
    scores = metrics.pair_scores(np.stack([cache[p] for p in left]), np.stack([cache[p] for p in right]))
    report = metrics.kfold_accuracy(scores, same, folds)
    report.update(roc_auc=metrics.roc_auc(scores[same], scores[~same]), pairs=len(pairs), no_face=cache.no_face)
    report["_roc"] = metrics.roc_curve(scores[same], scores[~same])
    return report


def evaluate_celeba_ir(recognizer: Recognizer, root: Path) -> dict:
    """Positives: pairs of query images of one id; negatives: every query against every distractor."""
    with open(root / "celebA_anno_query.csv") as fh:
        rows = list(csv.DictReader(fh))
    queries = [root / "celebA_query" / r["img"] for r in rows]
    ids = np.array([r["id"] for r in rows])
    distractors = sorted((root / "celebA_distractors").iterdir())
    cache = EmbeddingCache(recognizer, "crop")
    cache.add(queries + distractors, "celeba_ir")
    q = np.stack([cache[p] for p in queries])
    d = np.stack([cache[p] for p in distractors])
    i, j = np.triu_indices(len(q), k=1)
    same = ids[i] == ids[j]
    positives = np.sum(q[i[same]] * q[j[same]], axis=1)
    negatives = (q @ d.T).ravel()
    report = {"positives": int(len(positives)), "negatives": int(len(negatives)),
              "roc_auc": metrics.roc_auc(positives, negatives)}
    for fpr in CELEBA_IR_FPRS:
        tpr, thr = metrics.tpr_at_fpr(positives, negatives, fpr)
        report[f"tpr@fpr={fpr:g}"] = tpr
        report[f"threshold@fpr={fpr:g}"] = thr
    report["_roc"] = metrics.roc_curve(positives, negatives)
    return report


def evaluate_identification(recognizer: Recognizer, root: Path, crop_mode: str, seed: int = 0,
                            enrolled_share: float = 0.8, gallery_per_person: int = 5) -> dict:
    """Closed-set top-1/top-5 (enrolled people's other images against mean vectors of up to
    ``gallery_per_person`` of their images) and open-set FNIR at FPIR 0.01 (the people left
    out of the gallery are presented as strangers)."""
    people = sorted(p for p in root.iterdir() if p.is_dir())
    files = {p.name: sorted(f for f in p.iterdir() if f.is_file()) for p in people}
    usable = [name for name, fs in files.items() if len(fs) >= 2]
    rng = np.random.default_rng(seed)
    order = rng.permutation(usable)
    enrolled = sorted(order[: max(1, int(round(len(order) * enrolled_share)))].tolist())
    strangers = sorted(order[len(enrolled):].tolist())
    cache = EmbeddingCache(recognizer, crop_mode)
    cache.add([f for n in enrolled + strangers for f in files[n]], "identification")
    g, gl, q, ql = [], [], [], []
    for n in enrolled:
        fs = list(rng.permutation(files[n]))
        k = min(gallery_per_person, len(fs) // 2 if len(fs) < 2 * gallery_per_person else gallery_per_person)
        k = max(1, k)
        g += [cache[f] for f in fs[:k]]
        gl += [n] * k
        q += [cache[f] for f in fs[k:]]
        ql += [n] * (len(fs) - k)
    g, q = np.stack(g), np.stack(q)
    gl, ql = np.array(gl), np.array(ql)
    report = {"enrolled_people": len(enrolled), "stranger_people": len(strangers), "probes": len(q),
              **metrics.closed_set_accuracy(g, gl, q, ql), "no_face": cache.no_face}
    if strangers:
        s = np.stack([cache[f] for n in strangers for f in files[n]])
        report["open_set"] = metrics.open_set_identification(g, gl, q, ql, s, fpir=0.01)
    return report


def plot_rocs(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (fpr, tpr) in curves.items():
        ax.plot(np.maximum(fpr, 1e-6), tpr, label=name)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    ax.set_title("ROC")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def format_table(report: dict) -> str:
    lines = [f"model {report['model_version']}"]
    for section, values in report.items():
        if not isinstance(values, dict):
            continue
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
            elif isinstance(value, float):
                value = f"{value:.4f}"
            elif isinstance(value, list):
                continue
            lines.append(f"  {key:<24} {value}")
    return "\n".join(lines)


def run_evaluation(args: argparse.Namespace) -> dict:
    recognizer = Recognizer(args.model)
    report: dict = {"model": str(args.model), "model_version": recognizer.version}
    curves = {}
    if args.lfw or args.pairs:
        if not (args.lfw and args.pairs):
            raise SystemExit("--lfw and --pairs go together")
        report["lfw"] = evaluate_lfw(recognizer, Path(args.lfw), Path(args.pairs), args.lfw_crop_mode)
        curves["LFW"] = report["lfw"].pop("_roc")
    if args.celeba_ir:
        report["celeba_ir"] = evaluate_celeba_ir(recognizer, Path(args.celeba_ir))
        curves["celeba_ir"] = report["celeba_ir"].pop("_roc")
    if args.identification:
        report["identification"] = evaluate_identification(
            recognizer, Path(args.identification), args.identification_crop_mode)
    if len(report) == 2:
        raise SystemExit("nothing to evaluate: give --lfw/--pairs, --celeba-ir or --identification")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    if curves:
        plot_rocs(curves, out.with_suffix(".roc.png"))
    print(format_table(report))
    print(f"wrote {out}" + (f" and {out.with_suffix('.roc.png')}" if curves else ""))
    return report


__all__ = ["parse_lfw_pairs", "evaluate_lfw", "evaluate_celeba_ir", "evaluate_identification",
           "run_evaluation", "FaceServiceError"]
