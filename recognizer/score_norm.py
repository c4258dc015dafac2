"""Adaptive score normalisation (AS-norm): the score rule, and its calibrated threshold.

Why: at FAR 1e-3 the threshold is set by a few look-alike pairs, made by faces that resemble
many people. AS-norm marks such faces down. Each face's ``k`` highest cosines against a cohort
of other people give it a mean and a spread. A pair's score is its cosine standardised by each
side's mean and spread, then averaged. On the shipped model this takes val TAR at FAR 1e-3 from
0.751 to 0.779, with a cohort of 400 training identities and K = 100 (docs/BENCHMARKS.md, "AS-norm
with the user's own gallery as the cohort").

The score is not a cosine, and its spread depends on the cohort's size and K, so each model gets
a threshold for one size and K: a :class:`Calibration`, kept in a file beside the model
(:func:`calibration_path`) so that the model's weights and version stay as they are. The cohort
itself (people of the user's gallery) is chosen in ``index.cohort``.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ModelArtifactError
from .sidecar import find_sidecar, read_sidecar, sidecar_path, write_sidecar

FORMAT = "face-score-norm"
KIND = "score_norm"


def calibration_path(model_path: str | os.PathLike[str]) -> Path:
    """Where a model's calibration lives: ``<model stem>.score_norm.json`` beside it."""
    return sidecar_path(model_path, KIND)


def top_k_stats(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each row's ``k`` highest finite scores. Entries set to
    ``-inf`` (a person left out of their own cohort) are never among them, as long as every row
    has at least ``k`` finite entries."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"need a (n, m) score array with 1 <= k <= m, got {scores.shape} and k={k}")
    top = np.partition(scores, scores.shape[1] - k, axis=1)[:, -k:]
    return top.mean(1), np.maximum(top.std(1), 1e-6)


def as_norm(cosines: np.ndarray, first: tuple[np.ndarray, np.ndarray],
            second: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Cosines standardised by both sides' (mean, sd), averaged: the AS-norm score."""
    return 0.5 * ((cosines - first[0]) / first[1] + (cosines - second[0]) / second[1])


@dataclass(frozen=True)
class Calibration:
    """The AS-norm threshold of one model, for one cohort size and K (a file beside the model)."""

    model_version: str
    cohort_size: int
    k: int
    threshold: float
    far: float
    source: str

    def save(self, path: str | os.PathLike[str]) -> None:
        write_sidecar(path, FORMAT, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Calibration":
        """Read a calibration file; ModelArtifactError naming what is wrong with it."""
        body = read_sidecar(path, FORMAT, "score-norm calibration")
        try:
            cal = cls(str(body["model_version"]), int(body["cohort_size"]), int(body["k"]),
                      float(body["threshold"]), float(body["far"]), str(body["source"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelArtifactError(f"{path}: missing or bad field: {exc}") from None
        if not (1 <= cal.k < cal.cohort_size and np.isfinite(cal.threshold)):
            raise ModelArtifactError(f"{path}: needs 1 <= k < cohort_size and a finite threshold")
        return cal


def find_calibration(model_path: str | os.PathLike[str], model_version: str) -> Calibration | None:
    """The calibration beside a model, if there is one and it is this model's; a log line says
    why a file there is not used (the service then decides on the cosine alone)."""
    return find_sidecar(model_path, KIND, model_version, Calibration.load, "score normalisation off")
