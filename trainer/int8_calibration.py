"""``python -m trainer calibrate-int8``: measure a model's int8 parameters, check them, keep them beside it.

The ranges are measured on crops of the model's own training split and their mirrors (what the
flip-averaging embedder feeds the network), never on a held-out image. The check runs on the
split's held-out people, whom calibration never saw: the int8 embedding against the fp32 one
(cosine), and the figures a release is judged on (open TAR at FAR 1e-2 / 1e-3, closed top-1),
both ways. The file is written only if int8 keeps to the bars session 7 set for it
(docs/BENCHMARKS.md): every held-out embedding at cosine >= :data:`MIN_COSINE` to fp32, and the
open TAR at FAR 1e-3 no more than :data:`MAX_TAR_DROP` below fp32's.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from recognizer.artifact import ModelArtifact
from recognizer.embedder import Embedder
from recognizer.int8 import Int8Quantization, calibrate, library_versions, quantization_path
from recognizer.preprocess import resize_to_input, to_tensor

from . import metrics
from .data import closed_set_gallery, model_split, sample_rows

CALIBRATION_IMAGES = 128
MIN_COSINE = 0.995
MAX_TAR_DROP = 0.005
GALLERY_PER_IDENTITY = 5  # the closed-set check's gallery, as trainer fit's per-epoch one
BATCH = 16


def figures(embeddings: np.ndarray, labels: np.ndarray, open_rows: np.ndarray, gallery_rows: np.ndarray,
            probe_rows: np.ndarray) -> dict:
    """Open TAR at FAR 1e-2 / 1e-3 on the held-out people and closed top-1, from one set of
    embeddings indexed by split row."""
    pos, neg = metrics.all_pairs(embeddings[open_rows], labels[open_rows])
    report = metrics.verification_report(pos, neg)
    closed = metrics.closed_set_accuracy(embeddings[gallery_rows], labels[gallery_rows],
                                         embeddings[probe_rows], labels[probe_rows])
    return {"tar@far=0.01": report["tar@far=0.01"], "tar@far=0.001": report["tar@far=0.001"], "top1": closed["top1"]}


def failed_bars(report: dict, min_cosine: float = MIN_COSINE, max_tar_drop: float = MAX_TAR_DROP) -> str:
    """Which bars int8 misses in a :func:`calibrate_model` report ("" when it meets both)."""
    failed = []
    if report["min_cosine"] < min_cosine:
        failed.append(f"min cosine {report['min_cosine']:.4f} to fp32 (bar {min_cosine})")
    drop = report["fp32"]["tar@far=0.001"] - report["int8"]["tar@far=0.001"]
    if drop > max_tar_drop:
        failed.append(f"open TAR at FAR 1e-3 {drop:.4f} below fp32's (bar {max_tar_drop})")
    return " and ".join(failed)


def celeba_ir_figures(fp32: Embedder, int8: Embedder, celeba_ir: Path) -> dict:
    """celeba_ir TPR at FPR 0.01 / 0.001, both ways (a measurement only: it decides nothing)."""
    from recognizer.images import load_image

    from .release import celeba_ir_images, celeba_ir_scores

    queries, ids, distractors = celeba_ir_images(celeba_ir)
    crops = {name: np.stack([resize_to_input(load_image(p), fp32.recipe) for p in paths])
             for name, paths in (("queries", queries), ("distractors", distractors))}
    out = {}
    for way, embedder in (("fp32", fp32), ("int8", int8)):
        pos, neg = celeba_ir_scores(embedder.embed(crops["queries"]), ids, embedder.embed(crops["distractors"]))
        out[way] = {f"tpr@fpr={f:g}": metrics.tpr_at_fpr(pos, neg, f)[0] for f in (0.01, 0.001)}
    return out


def calibrate_model(model_path: Path, celeba1k: Path, cache_dir: str | None, out: Path | None = None,
                    images: int = CALIBRATION_IMAGES, celeba_ir: Path | None = None,
                    min_cosine: float = MIN_COSINE, max_tar_drop: float = MAX_TAR_DROP) -> tuple[Int8Quantization, dict]:
    """Measure, check and (if the check passes) write the model's int8 parameters. Raises
    ValueError, naming the failed bar, without writing anything when int8 is not close enough."""
    start = time.time()
    artifact = ModelArtifact.load(model_path)
    fp32 = Embedder(artifact, backend="onnx")  # the embedding network alone: no detector is needed here
    config = artifact.training.get("config")
    if not config:
        raise ValueError("the model carries no training config: its training split is unknown")
    crops, labels, splits = model_split(config, celeba1k, artifact.recipe, cache_dir)
    chosen = crops[sample_rows(splits.train, images, 0)]
    batches = [to_tensor(chosen[s:s + BATCH], artifact.recipe).numpy() for s in range(0, len(chosen), BATCH)]
    if fp32.flip_average:
        batches += [b[:, :, :, ::-1].copy() for b in batches]
    params = calibrate(fp32._onnx.path, batches)  # noqa: SLF001 - the fp32 graph the embedder runs
    quantization = Int8Quantization(artifact.version, params, library_versions(), len(chosen),
                                    f"min/max over {len(chosen)} training-split crops of {celeba1k.name} and their "
                                    f"mirrors (trainer calibrate-int8)")
    int8 = Embedder(artifact, flip_average=fp32.flip_average, backend="onnx-int8", int8=quantization)

    gallery = closed_set_gallery(labels, splits.train, GALLERY_PER_IDENTITY, int(config["seed"]) + 1)
    rows = np.unique(np.concatenate([splits.open_set, gallery, splits.closed_val]))
    ways = {}
    for way, embedder in (("fp32", fp32), ("int8", int8)):
        emb = np.zeros((len(labels), artifact.embedding_size), np.float32)
        emb[rows] = embedder.embed(crops[rows])
        ways[way] = emb
    held_out = np.concatenate([splits.open_set, splits.closed_val])
    cosines = np.sum(ways["fp32"][held_out] * ways["int8"][held_out], axis=1)
    report = {way: figures(emb, labels, splits.open_set, gallery, splits.closed_val) for way, emb in ways.items()}
    report["held_out_images"] = int(len(held_out))
    report["min_cosine"] = float(cosines.min())
    report["mean_cosine"] = float(cosines.mean())
    if celeba_ir is not None:
        report["celeba_ir"] = celeba_ir_figures(fp32, int8, celeba_ir)
    report["seconds"] = round(time.time() - start, 1)
    failed = failed_bars(report, min_cosine, max_tar_drop)
    if failed:
        raise ValueError(f"int8 is not close enough to fp32 to keep: {failed}; nothing written. Figures: {report}")
    quantization = replace(quantization, checks={k: report[k] for k in ("fp32", "int8", "min_cosine", "held_out_images")})
    quantization.save(out or quantization_path(model_path))
    return quantization, report
