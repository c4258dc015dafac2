"""``python -m trainer calibrate-norm``: the AS-norm threshold of a model (pure functions + CLI body).

In service, the cohort is ``cohort_size`` people of the user's gallery, so the threshold must
hold for a cohort that calibration has never seen. Each draw here takes ``cohort_size`` of the
training identities as a stand-in gallery and finds the FAR threshold on the split's held-out
people. The calibrated threshold is the mean over draws; the report says how far FAR and TAR move
between draws at that threshold. The cohort vectors never leave this process: only the threshold
is written (recognizer/score_norm.py, :class:`~recognizer.score_norm.Calibration`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recognizer import Recognizer
from recognizer.score_norm import Calibration, as_norm, calibration_path, top_k_stats

from . import bootstrap, metrics
from .data import model_split, sample_rows

COHORT_SIZE = 400  # chosen on val (docs/BENCHMARKS.md): below ~200 people AS-norm loses to the cosine
TOP_K = 100
DRAWS = 20
FAR = 1e-3
COHORT_IMAGES_PER_IDENTITY = 8


def val_pair_scores(val: np.ndarray, cohort: np.ndarray, k: int) -> np.ndarray:
    """AS-norm score of every pair (i < j) of ``val`` (unit rows; :func:`trainer.bootstrap.pair_table`
    order) against ``cohort``, whose people are none of val's."""
    i, j = np.triu_indices(len(val), k=1)
    mean, sd = top_k_stats(val @ cohort.T, k)
    return as_norm(bootstrap.pair_scores_all(val), (mean[i], sd[i]), (mean[j], sd[j]))


def calibrate_threshold(val: np.ndarray, val_labels: np.ndarray, pool: np.ndarray, cohort_size: int = COHORT_SIZE,
                        k: int = TOP_K, far: float = FAR, draws: int = DRAWS, seed: int = 0) -> dict:
    """Mean over ``draws`` of the FAR threshold with ``cohort_size`` random rows of ``pool`` as the
    cohort, and what each draw gives at that mean threshold (FAR, TAR), beside the raw cosine's TAR."""
    if not 1 <= k < cohort_size <= len(pool):
        raise ValueError(f"need 1 <= k ({k}) < cohort size ({cohort_size}) <= pool ({len(pool)})")
    table = bootstrap.pair_table(val_labels)
    rng = np.random.default_rng(seed)
    per_draw = [val_pair_scores(val, pool[rng.choice(len(pool), cohort_size, replace=False)], k) for _ in range(draws)]
    thresholds = np.array([metrics.threshold_at_far(s[~table.positive], far) for s in per_draw])
    threshold = float(thresholds.mean())
    fars = np.array([np.mean(s[~table.positive] > threshold) for s in per_draw])
    tars = np.array([np.mean(s[table.positive] > threshold) for s in per_draw])
    raw = bootstrap.pair_scores_all(val)
    raw_tar, raw_thr = metrics.tpr_at_fpr(raw[table.positive], raw[~table.positive], far)
    return {"threshold": threshold, "threshold_sd": float(thresholds.std()), "draws": draws,
            "cohort_size": cohort_size, "k": k, "far": far,
            "far_at_threshold": {"mean": float(fars.mean()), "min": float(fars.min()), "max": float(fars.max())},
            "tar_at_threshold": {"mean": float(tars.mean()), "min": float(tars.min()), "max": float(tars.max())},
            "raw_cosine": {"tar": raw_tar, "threshold": raw_thr},
            "pairs": {"positive": int(table.positive.sum()), "negative": int((~table.positive).sum()),
                      "identities": table.identities}}


def training_identity_means(rec: Recognizer, crops: np.ndarray, labels: np.ndarray, train_rows: np.ndarray,
                            per_identity: int = COHORT_IMAGES_PER_IDENTITY) -> np.ndarray:
    """Unit-norm mean embedding of each training identity (at most ``per_identity`` images each): the
    stand-in galleries that cohorts are drawn from."""
    rows = np.concatenate([sample_rows(train_rows[labels[train_rows] == c], per_identity, 0)
                           for c in np.unique(labels[train_rows])])
    return metrics.class_means(rec.embed(crops[rows]), labels[rows])[1]


def calibrate_model(model: Path, celeba1k: Path, cache_dir: str | None = ".cache", out: Path | None = None,
                    cohort_size: int = COHORT_SIZE, k: int = TOP_K, draws: int = DRAWS) -> tuple[Calibration, dict]:
    """Calibrate ``model`` on its own split's held-out people and write the calibration beside it
    (or to ``out``). Returns the calibration and the full report."""
    rec = Recognizer(model)
    config = rec.artifact.training.get("config")
    if not config:
        raise ValueError(f"{model} carries no training config: its held-out people are unknown")
    crops, labels, splits = model_split(config, celeba1k, rec.recipe, cache_dir)
    pool = training_identity_means(rec, crops, labels, splits.train)
    val = rec.embed(crops[splits.open_set])
    report = calibrate_threshold(val, labels[splits.open_set], pool, cohort_size, k, FAR, draws)
    far_range = report["far_at_threshold"]
    source = (f"FAR {FAR:g} on the split's {report['pairs']['identities']} held-out identities, mean threshold of "
              f"{draws} cohorts of {cohort_size} of {len(pool)} training identities (FAR {far_range['min']:.5f}-"
              f"{far_range['max']:.5f} across them; TAR {report['tar_at_threshold']['mean']:.3f} against the "
              f"cosine's {report['raw_cosine']['tar']:.3f})")
    calibration = Calibration(rec.version, cohort_size, k, report["threshold"], FAR, source)
    calibration.save(out or calibration_path(model))
    return calibration, report
