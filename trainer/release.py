"""``python -m trainer release``: a run's ``model.pt`` -> the release model in ``models/``, measured.

The release file holds the weights in fp16 (half the size; the network still runs in fp32, the
weights are widened on load), with the same artifact format and its own content-hash version.
It is accepted only if its embeddings agree with the fp32 model's on real faces (cosine >= 0.999)
and celeba_ir TPRs move by at most 0.005. The command then measures the release model (celeba_ir,
closed-set and open-set on the run's own split, and degraded faces for the card's limits) and
writes ``models/card.json`` and the model card ``models/README.md`` from its template.
"""
from __future__ import annotations

import csv
import json
import os
import re
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from recognizer import Recognizer
from recognizer.artifact import ModelArtifact
from recognizer.atomic import atomic_write_bytes
from recognizer.images import load_image
from recognizer.preprocess import resize_to_input

from . import bootstrap, metrics
from .data import closed_set_gallery, discover, model_split
from .evaluate import CELEBA_IR_FPRS
from .precision import cpu_name
from .strangers import calibrate_model as calibrate_strangers
from .strangers import service_view as photos_as_served

# identity resamplings behind the card's intervals (trainer/bootstrap.py): a round over val's 620k
# negative pairs took 7 ms, over celeba_ir's 2.4M 70 ms (Intel Xeon, cores busy), so it gets fewer
SPREAD_ROUNDS = 1000
CELEBA_IR_ROUNDS = 400
CARD_FPRS = (0.05, 0.01, 0.001)  # the celeba_ir figures the card shows, so the ones given intervals

RELEASE_NAME = "facerec.pt"
MIN_AGREEMENT = 0.999
MAX_TPR_SHIFT = 0.005
CARD_TEMPLATE = Path(__file__).with_name("model_card.md")
KEEP_FP32 = ("running_mean", "running_var")  # BatchNorm statistics: tiny, and fp16 would round them


def half_precision(artifact: ModelArtifact) -> ModelArtifact:
    """The same model with its floating-point weights stored as fp16."""
    state = {name: (t.half() if t.is_floating_point() and not name.endswith(KEEP_FP32) else t)
             for name, t in artifact.state_dict.items()}
    training = {**artifact.training, "released_from": artifact.version, "weights_dtype": "float16"}
    return ModelArtifact(state_dict=state, recipe=artifact.recipe, threshold=artifact.threshold,
                         embedding_size=artifact.embedding_size, architecture=artifact.architecture,
                         flip_average=artifact.flip_average, training=training)


def celeba_ir_images(root: Path) -> tuple[list[Path], np.ndarray, list[Path]]:
    """(query paths, query ids, distractor paths) of the celeba_ir protocol."""
    with open(root / "celebA_anno_query.csv") as fh:
        rows = list(csv.DictReader(fh))
    return ([root / "celebA_query" / r["img"] for r in rows], np.array([r["id"] for r in rows]),
            sorted((root / "celebA_distractors").iterdir()))


def celeba_ir_scores(queries: np.ndarray, ids: np.ndarray, distractors: np.ndarray,
                     probes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positive scores (pairs of one id's queries) and negatives (queries x distractors). With
    ``probes`` (the queries changed, e.g. degraded), one side of every pair is the probe."""
    probes = queries if probes is None else probes
    i, j = np.triu_indices(len(queries), k=1)
    same = ids[i] == ids[j]
    positives = np.sum(probes[i[same]] * queries[j[same]], axis=1)
    return positives, (probes @ distractors.T).ravel()


def tpr_row(positives: np.ndarray, negatives: np.ndarray, fprs=CELEBA_IR_FPRS) -> dict:
    row = {f"tpr@fpr={f:g}": metrics.tpr_at_fpr(positives, negatives, f)[0] for f in fprs}
    row["roc_auc"] = metrics.roc_auc(positives, negatives)
    return row


# Conditions the card reports, applied to celeba_ir query crops (83x100): each takes and returns
# an HxWx3 uint8 image. Measured, not guessed: a face this small / dark / covered scores like this.
def _small(px: int) -> Callable[[np.ndarray], np.ndarray]:
    def apply(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        tiny = cv2.resize(img, (px, max(1, round(px * h / w))), interpolation=cv2.INTER_AREA)
        return cv2.resize(tiny, (w, h), interpolation=cv2.INTER_LINEAR)
    return apply


def _dark(img: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    dim = 255.0 * (img / 255.0) ** 2.2 * 0.35  # underexposed, then sensor noise
    return np.clip(dim + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def _cover(top: float, bottom: float, value: int) -> Callable[[np.ndarray], np.ndarray]:
    def apply(img: np.ndarray) -> np.ndarray:
        out = img.copy()
        h = img.shape[0]
        out[round(top * h):round(bottom * h)] = value
        return out
    return apply


CONDITIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "small face: 40 px wide": _small(40),
    "small face: 24 px wide": _small(24),
    "low light: gamma 2.2, 35% exposure, noise": _dark,
    "occlusion: mouth and chin covered (a mask)": _cover(0.62, 1.0, 128),
    "occlusion: eye band covered (dark glasses)": _cover(0.30, 0.50, 20),
}


def embed_arrays(rec: Recognizer, images: list[np.ndarray]) -> np.ndarray:
    """Embeddings of celeba_ir-style crops (already the aligned frame), resized to the input."""
    return rec.embed(np.stack([resize_to_input(img, rec.recipe) for img in images]))


def regression_subset(rec: Recognizer, celeba_ir: Path, identities: int = 20, distractors: int = 600) -> dict:
    """celeba_ir on a fixed subset (the first ``identities`` query ids by name, the first
    ``distractors`` distractors): small enough for the test suite, recorded in card.json at
    release so a test can tell when preprocessing or alignment changes what the model sees."""
    q_paths, ids, d_paths = celeba_ir_images(celeba_ir)
    keep = np.isin(ids, sorted(set(ids))[:identities])
    q = rec.embed_images([p for p, k in zip(q_paths, keep) if k], "crop")
    d = rec.embed_images(d_paths[:distractors], "crop")
    pos, neg = celeba_ir_scores(q, ids[keep], d)
    return {**tpr_row(pos, neg, fprs=(0.05, 0.01)), "queries": int(keep.sum()), "distractors": len(d),
            "tpr_at_threshold": float(np.mean(pos > rec.threshold)),
            "fpr_at_threshold": float(np.mean(neg > rec.threshold))}


def photo_pairs(rec: Recognizer, photos: Path, limit: int = 120) -> dict:
    """Accuracy at the model's threshold on the first ``limit`` labelled pairs of
    ``photos/master.csv`` (raw photos: the largest face each, found by the service's detector)."""
    with open(photos / "master.csv") as fh:
        rows = list(csv.DictReader(fh))[:limit]
    vectors: dict[str, np.ndarray | None] = {}
    for name in dict.fromkeys([r["file_x"] for r in rows] + [r["file_y"] for r in rows]):
        faces = rec.analyze(photos / name)
        vectors[name] = faces[0].embedding if faces else None
    scored = [(float(vectors[r["file_x"]] @ vectors[r["file_y"]]), r["Decision"].strip().lower() == "yes")
              for r in rows if vectors[r["file_x"]] is not None and vectors[r["file_y"]] is not None]
    scores, same = np.array([s for s, _ in scored]), np.array([t for _, t in scored])
    accepted = scores > rec.threshold
    return {"pairs": len(scored), "skipped_no_face": len(rows) - len(scored),
            "accuracy_at_threshold": float(np.mean(accepted == same)),
            "tpr_at_threshold": float(np.mean(accepted[same])) if same.any() else float("nan"),
            "fpr_at_threshold": float(np.mean(accepted[~same])) if (~same).any() else float("nan")}


def measure(model_path: Path, celeba_ir: Path, celeba1k: Path | None, reference: Path | None,
            cache_dir: str | None = ".cache", photos: Path | None = None) -> dict:
    """Every number the card shows, for the model at ``model_path``; with ``reference`` (the fp32
    model it was made from) also the agreement check."""
    rec = Recognizer(model_path)
    report: dict = {"version": rec.version, "threshold": rec.threshold,
                    "threshold_source": rec.artifact.training.get("threshold_source", "")}
    start = time.time()
    q_paths, ids, d_paths = celeba_ir_images(celeba_ir)
    q_imgs = [load_image(p) for p in q_paths]
    q = embed_arrays(rec, q_imgs)
    d = rec.embed_images(d_paths, "crop")
    pos, neg = celeba_ir_scores(q, ids, d)
    report["celeba_ir"] = tpr_row(pos, neg)
    table, scores = bootstrap.query_distractor_table(ids, len(d)), np.concatenate([pos, neg])
    report["celeba_ir"]["spread"] = {
        f"tpr@fpr={f:g}": bootstrap.summarise(bootstrap.bootstrap_tar(table, [scores], f, CELEBA_IR_ROUNDS)[:, 0])
        for f in CARD_FPRS}
    report["celeba_ir"].update(queries=len(q), identities=int(len(set(ids))), distractors=len(d))
    thr = rec.threshold
    report["celeba_ir"]["at_threshold"] = {"tpr": float(np.mean(pos > thr)), "fpr": float(np.mean(neg > thr))}
    report["conditions"] = {}
    for name, change in CONDITIONS.items():
        probes = embed_arrays(rec, [change(img) for img in q_imgs])
        pos, neg = celeba_ir_scores(q, ids, d, probes)
        report["conditions"][name] = {"tpr@fpr=0.01": metrics.tpr_at_fpr(pos, neg, 0.01)[0],
                                      "tpr_at_threshold": float(np.mean(pos > thr)),
                                      "fpr_at_threshold": float(np.mean(neg > thr))}
    if reference is not None:
        ref = Recognizer(reference)
        rq = embed_arrays(ref, q_imgs)
        cos = np.sum(rq * q, axis=1)
        ref_row = tpr_row(*celeba_ir_scores(rq, ids, ref.embed_images(d_paths, "crop")))
        shift = max(abs(ref_row[k] - report["celeba_ir"][k]) for k in ref_row if k.startswith("tpr@"))
        report["agreement"] = {"reference": ref.version, "min_cosine": float(cos.min()),
                               "mean_cosine": float(cos.mean()), "max_tpr_shift": float(shift),
                               "reference_celeba_ir": ref_row}
    report["regression"] = {"celeba_ir_subset": regression_subset(rec, celeba_ir)}
    if photos is not None:
        report["regression"]["photo_pairs"] = photo_pairs(rec, photos)
    if celeba1k is not None:
        report["split"] = split_report(rec, celeba1k, cache_dir)
    report["seconds"] = round(time.time() - start, 1)
    return report


def split_report(rec: Recognizer, celeba1k: Path, cache_dir: str | None) -> dict:
    """Closed-set top-1/top-5 and open-set TAR on the run's own split (rebuilt from the
    artifact's config), measured with the serving embedder."""
    config = rec.artifact.training.get("config")
    if not config:
        return {"skipped": "the artifact carries no training config"}
    try:
        crops, labels, sp = model_split(config, celeba1k, rec.recipe, cache_dir)
    except ValueError as exc:
        return {"skipped": str(exc)}
    # gallery: the mean of every training image of each identity, as bench.accuracy_vs_dlib measures
    # dlib (so the card's two columns are the same protocol)
    gallery = closed_set_gallery(labels, sp.train, len(labels), int(config["seed"]) + 1)
    closed = metrics.closed_set_accuracy(rec.embed(crops[gallery]), labels[gallery],
                                         rec.embed(crops[sp.closed_val]), labels[sp.closed_val])
    # every pair once, in the order the bootstrap's table lists them (metrics.all_pairs's pairs)
    table = bootstrap.pair_table(labels[sp.open_set])
    scores = bootstrap.pair_scores_all(rec.embed(crops[sp.open_set]))
    pos, neg = scores[table.positive], scores[~table.positive]
    open_set = metrics.verification_report(pos, neg)
    spread = bootstrap.bootstrap_tar(table, [scores], 1e-3, SPREAD_ROUNDS)[:, 0]
    service = service_view(rec, [discover(celeba1k, config.get("limit_identities")).paths[r] for r in sp.open_set],
                           labels[sp.open_set])
    return {"service_view": service,
            "closed_set": closed, "closed_probes": int(len(sp.closed_val)), "closed_gallery_images": int(len(gallery)),
            "closed_identities": int(len(np.unique(labels[gallery]))),
            "open_set": {k: v for k, v in open_set.items() if not k.startswith("_")},
            "open_identities": int(len(np.unique(labels[sp.open_set]))),
            "open_tar_spread": {"far": 1e-3, "rounds": SPREAD_ROUNDS, **bootstrap.summarise(spread)},
            "open_tar_at_threshold": float(np.mean(pos > rec.threshold)),
            "open_far_at_threshold": float(np.mean(neg > rec.threshold))}


def service_view(rec: Recognizer, paths: list[Path], labels: np.ndarray, far: float = 1e-3) -> dict:
    """The held-out people's photos as the service sees them: each through the detector and
    alignment (``Recognizer.analyze``, largest face) instead of cut from CelebA's own frame by the
    recipe. The threshold is calibrated on the frames; here is the FAR it gives on uploaded
    photos (session 17: 0.00139 for a threshold set at 0.001), and the threshold that would give
    ``far`` there."""
    embeddings, kept = photos_as_served(rec, paths, labels)
    if len(set(kept.tolist())) < 2:
        return {"skipped": f"faces found in {len(kept)} of {len(paths)} photos: too few people to pair"}
    table = bootstrap.pair_table(kept)
    scores = bootstrap.pair_scores_all(embeddings)
    pos, neg = scores[table.positive], scores[~table.positive]
    tar, thr = metrics.tpr_at_fpr(pos, neg, far)
    return {"photos": len(paths), "faces_found": len(kept), "far": far, f"tar@far={far:g}": tar,
            "threshold_at_far": thr, "tar_at_threshold": float(np.mean(pos > rec.threshold)),
            "far_at_threshold": float(np.mean(neg > rec.threshold))}


def release(model: Path, out_dir: Path, celeba_ir: Path, celeba1k: Path | None, cache_dir: str | None = ".cache",
            force: bool = False, cpu: str | None = None, photos: Path | None = None) -> dict:
    """Write ``out_dir/facerec.pt`` (fp16), ``card.json`` and ``README.md``; refuse a release
    whose fp16 weights disagree with the fp32 model beyond the bounds above."""
    source = ModelArtifact.load(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    candidate = out_dir / f".{RELEASE_NAME}.candidate"
    half_precision(source).save(candidate)
    try:
        report = measure(candidate, celeba_ir, celeba1k, reference=model, cache_dir=cache_dir, photos=photos)
        agree = report["agreement"]
        if not force and (agree["min_cosine"] < MIN_AGREEMENT or agree["max_tpr_shift"] > MAX_TPR_SHIFT):
            raise SystemExit(f"fp16 weights disagree with {model}: min cosine {agree['min_cosine']:.5f} "
                             f"(need {MIN_AGREEMENT}), TPR shift {agree['max_tpr_shift']:.4f} (max {MAX_TPR_SHIFT})")
        os.replace(candidate, out_dir / RELEASE_NAME)
    finally:
        candidate.unlink(missing_ok=True)
    report["file"] = RELEASE_NAME
    report["file_bytes"] = (out_dir / RELEASE_NAME).stat().st_size
    report["training"] = {k: v for k, v in source.training.items() if k != "last_epoch"}
    report["source_model"] = {"version": source.version, "path": str(model)}
    report["cpu"] = cpu or cpu_name()
    if celeba1k is not None and "skipped" not in report.get("split", {}):
        from .score_norm import calibrate_model  # the AS-norm threshold, written beside the release

        try:
            calibration, norm = calibrate_model(out_dir / RELEASE_NAME, celeba1k, cache_dir)
            report["score_norm"] = {"threshold": calibration.threshold, "cohort_size": calibration.cohort_size,
                                    "k": calibration.k, "source": calibration.source,
                                    "tar_at_threshold": norm["tar_at_threshold"],
                                    "far_at_threshold": norm["far_at_threshold"]}
        except ValueError as exc:  # e.g. fewer training identities than a cohort holds
            report["score_norm"] = {"skipped": str(exc)}
        try:  # the stranger curve, written beside the release (STRANGER_RATE rests on it)
            curve, strangers = calibrate_strangers(out_dir / RELEASE_NAME, celeba1k, cache_dir)
            report["strangers"] = {
                "source": curve.source, **strangers,
                "at_model_threshold": {str(n): curve.stranger_rate(report["threshold"], n) for n in STRANGER_GALLERIES},
                "threshold_for_0.01": {str(n): curve.threshold_for(0.01, n) for n in STRANGER_GALLERIES}}
        except ValueError as exc:
            report["strangers"] = {"skipped": str(exc)}
        from .int8_calibration import calibrate_model as calibrate_int8

        try:  # the int8 parameters, written beside the release (INFERENCE_BACKEND=onnx-int8 rests on them)
            kept, int8 = calibrate_int8(out_dir / RELEASE_NAME, celeba1k, cache_dir)
            report["int8"] = {"source": kept.source, **{k: int8[k] for k in ("fp32", "int8", "min_cosine",
                                                                             "held_out_images")}}
        except ValueError as exc:  # int8 not close enough to fp32: the backend is not offered for this model
            report["int8"] = {"skipped": str(exc)}
    atomic_write_bytes(out_dir / "card.json", (json.dumps(report, indent=1, default=float) + "\n").encode())
    atomic_write_bytes(out_dir / "README.md", render_card(report).encode())
    return report


def _pct(v: float) -> str:
    return f"{v:.3f}"


def _with_interval(value: float, spread: dict | None) -> str:
    """``0.751 (0.660-0.831)``: the figure and its 90% bootstrap interval, when one was measured."""
    if not spread or "ci90" not in spread:
        return _pct(value)
    lo, hi = spread["ci90"]
    return f"{_pct(value)} ({_pct(lo)}-{_pct(hi)})"


def _plain(value: object) -> object:
    """Tuples and lists compare alike (a config read back from JSON has lists)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def fit_command(training: dict) -> str:
    """The ``trainer fit`` line that made this model: its config name plus a ``--set`` for every
    field that differs from that config (epochs apart), so the card says exactly what was run."""
    from .configs import CONFIGS

    config = training.get("config", {})
    base = CONFIGS.get(config.get("name", ""))
    sets = []
    if base is not None:
        for key, value in config.items():
            default = getattr(base, key, None)
            if key not in ("name", "epochs") and _plain(default) != _plain(value):
                shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
                sets.append(f"--set {key}={shown}")
    extras = "".join(f" --extra <prepared {Path(e['data']).name}>" for e in training.get("extra_sources", []))
    init = training.get("init")
    if init:
        extras += f" --init <model {init.get('version')}>"
    return (f"python -m trainer fit --data ../shared/data/celeba1k{extras} --config {config.get('name', '?')} "
            f"--epochs {training.get('epochs_done', '?')}{''.join(' ' + x for x in sets)} --out runs/NAME")


def distill_note(config: dict) -> str:
    """What the loss row adds when the model was taught by dlib's network."""
    kind = config.get("distill", "none")
    if kind in (None, "none"):
        return ""
    form = {"projection": "a learned 512->128 projection pulled to its direction (1 - cosine)",
            "relation": "the batch's pairwise cosines matched to its own",
            "both": "a learned 512->128 projection pulled to its direction, plus "
                    f"{config.get('distill_relation_share')} times the batch's pairwise cosines matched to "
                    "its own"}.get(kind, kind)
    return (f"; in training only, plus a distillation term (weight {config.get('distill_weight')}) toward dlib's "
            f"public-domain network `dlib_face_recognition_resnet_model_v1` (CC0): {form}. Its vectors were cached "
            f"once per training image by `python -m trainer teacher`; dlib is not used at run time")


def init_note(init: dict | None) -> str:
    """The recipe line's tail for a fine-tune: the chain of models it grew from, each with what it
    cost, as far back as the files recorded it (older models kept one level only)."""
    links = []
    while init:
        links.append(f"model {init.get('version')} ({init.get('epochs_done')} epochs, "
                     f"{(init.get('wall_seconds') or 0) / 60:.0f} minutes of its own)")
        init = init.get("init")
    return "; fine-tuned from " + ", itself fine-tuned from ".join(links) if links else ""


def averaged_note(training: dict) -> str:
    """The recipe line's tail for a model made by ``trainer average`` (which models, with which
    weights) and for any model whose BatchNorm statistics were measured again (and on what)."""
    sources = training.get("averaged_from")
    if not sources:  # a trained model: say so only if its final statistics were measured again
        return f"; BatchNorm statistics {training['batchnorm']}" if training.get("batchnorm") else ""
    terms = " ".join(f"{'-' if s['weight'] < 0 else '+'} {abs(s['weight']):g} x `{s['version']}`"
                     for s in sources).lstrip("+ ")
    weights = ",".join(f"{s['weight']:g}" for s in sources)
    models = " ".join(f"--model <model {s['version']}>" for s in sources)
    bn = training.get("batchnorm") or "combined like the weights"
    count = re.search(r"on (\d+) training images", training.get("batchnorm") or "")
    bn_flag = f" --bn-images {count.group(1)}" if count else ""
    return (f"; then, with no training step, combined by `python -m trainer average {models} --weights {weights}"
            f"{bn_flag}` into {terms} (the first model's recipe above; BatchNorm statistics {bn})")


def machine_note(machine: dict, cpu_fallback: str) -> str:
    """Where the model trained, as the card says it: a GPU by name, else the CPU (cores)."""
    if machine.get("gpu"):
        return f"one {machine['gpu']} GPU (host CPU: {machine.get('cpu', cpu_fallback)})"
    return f"2 cores of: {machine.get('cpu') or cpu_fallback}"


def service_view_note(view: dict | None) -> str:
    """The card's sentence on the held-out photos taken through the detector (:func:`service_view`)."""
    if not view or "skipped" in view:
        return f"not measured ({(view or {}).get('skipped', 'no split')})."
    tar = view[f"tar@far={view['far']:g}"]
    return (f"the held-out people's {view['photos']} photos, each put through the detector and alignment instead of "
            f"cut from CelebA's frame ({view['faces_found']} faces found). At the threshold they give FAR "
            f"{view['far_at_threshold']:.5f} and TAR {_pct(view['tar_at_threshold'])}; FAR {view['far']:g} there "
            f"needs cosine {view['threshold_at_far']:.4f} (TAR {_pct(tar)}).")


def score_norm_note(norm: dict | None) -> str:
    """The card's sentence on the AS-norm calibration written beside the release."""
    if not norm or "skipped" in norm:
        return f"not calibrated ({(norm or {}).get('skipped', 'no celeba1k split')})."
    return (f"threshold {norm['threshold']:.4f} for a cohort of {norm['cohort_size']} enrolled people, K = "
            f"{norm['k']}, in `facerec.score_norm.json`: {norm['source']}.")


STRANGER_GALLERIES = (10, 50, 250, 1000)  # enrolled people the card gives the stranger rate for


def int8_note(int8: dict | None) -> str:
    """The card's sentence on the int8 embedding network (INFERENCE_BACKEND=onnx-int8)."""
    if not int8 or "skipped" in int8:
        return f"not offered ({(int8 or {}).get('skipped', 'no celeba1k split')})."
    return (f"`facerec.int8.json` ({int8['source']}). On the {int8['held_out_images']} held-out images the int8 "
            f"embedding is at cosine >= {int8['min_cosine']:.4f} to fp32; open TAR at FAR 1e-3 "
            f"{int8['int8']['tar@far=0.001']:.3f} (fp32 {int8['fp32']['tar@far=0.001']:.3f}), closed top-1 with "
            f"5 gallery images a person {int8['int8']['top1']:.3f} (fp32 {int8['fp32']['top1']:.3f}).")


def strangers_note(strangers: dict | None) -> str:
    """The card's sentence on the stranger curve written beside the release."""
    if not strangers or "skipped" in strangers:
        return f"not measured ({(strangers or {}).get('skipped', 'no celeba1k split')})."
    at = strangers["at_model_threshold"]
    need = strangers["threshold_for_0.01"]
    sizes = ", ".join(f"{at[str(n)]:.3f} among {n}" for n in STRANGER_GALLERIES)
    cosines = ", ".join(f"{need[str(n)]:.3f} for {n}" for n in STRANGER_GALLERIES)
    return (f"at the threshold, the share of strangers the curve expects to match someone enrolled is {sizes} "
            f"people. `STRANGER_RATE=0.01` would set identify's threshold at {cosines} (`facerec.strangers.json`: "
            f"{strangers['source']}).")


def render_card(report: dict) -> str:
    """The model card: ``model_card.md`` with its ``{{name}}`` fields filled from ``report``."""
    training = report.get("training", {})
    config = training.get("config", {})
    ir = report["celeba_ir"]
    split = report.get("split", {})
    extra = training.get("extra_sources", [])
    fields = {
        "version": report["version"],
        "source_version": report["source_model"]["version"],
        "file_mb": f"{report['file_bytes'] / 2**20:.1f}",
        "threshold": f"{report['threshold']:.4f}",
        "threshold_source": report["threshold_source"],
        "config": json.dumps({k: config.get(k) for k in ("name", "input_size", "epochs", "batch_size", "lr",
                                                          "scale", "margin", "margin_warmup_epochs", "dropout",
                                                          "precision", "seed")}),
        "epochs": str(training.get("epochs_done", "?")),
        "wall_minutes": f"{training.get('wall_seconds', 0) / 60:.0f}",
        "train_images": str(training.get("train_images", "?")),
        "train_identities": str(training.get("train_identities", "?")),
        "extra_sources": "; ".join(f"`{Path(e['data']).name}`: {e['images']} images of {e['identities']} identities"
                                   + (f" ({e['teacher_only_images']} of the images, of people with a single one, "
                                      "taught by the teacher alone)" if e.get("teacher_only_images") else "")
                                   for e in extra) or "none",
        "fit_command": fit_command(training),
        "distill": distill_note(config),
        "init": init_note(training.get("init")) + averaged_note(training),
        "machine": machine_note(training.get("machine", {}), report.get("cpu", "not recorded")),
        **{name: _with_interval(ir[key], ir.get("spread", {}).get(key))
           for name, key in (("ir_005", "tpr@fpr=0.05"), ("ir_001", "tpr@fpr=0.01"), ("ir_0001", "tpr@fpr=0.001"))},
        "ir_auc": _pct(ir["roc_auc"]),
        "ir_thr_tpr": _pct(ir["at_threshold"]["tpr"]), "ir_thr_fpr": f"{ir['at_threshold']['fpr']:.4f}",
        "top1": _pct(split.get("closed_set", {}).get("top1", float("nan"))),
        "top5": _pct(split.get("closed_set", {}).get("top5", float("nan"))),
        "open_tar": _with_interval(split.get("open_set", {}).get("tar@far=0.001", float("nan")),
                                   split.get("open_tar_spread")),
        "agree_min": f"{report['agreement']['min_cosine']:.5f}",
        "agree_shift": f"{report['agreement']['max_tpr_shift']:.4f}",
        "service_view": service_view_note(split.get("service_view")),
        "score_norm": score_norm_note(report.get("score_norm")),
        "strangers": strangers_note(report.get("strangers")),
        "int8": int8_note(report.get("int8")),
        "conditions": "\n".join(f"| {name} | {_pct(row['tpr@fpr=0.01'])} | {_pct(row['tpr_at_threshold'])} | "
                                f"{row['fpr_at_threshold']:.4f} |" for name, row in report["conditions"].items()),
    }
    text = CARD_TEMPLATE.read_text()
    for name, value in fields.items():
        text = text.replace("{{" + name + "}}", value)
    return text
