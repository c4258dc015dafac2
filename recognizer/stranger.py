"""How often a stranger is taken for someone enrolled, as the gallery grows (open-set 1:N).

Why: the model's threshold is set for one pair of faces, 1 stranger in 1,000 let in. Identify
compares a stranger with every enrolled person and answers with the best, so a stranger matches
*someone* far more often: on celeba_ir at the shipped threshold, 7% of strangers against 50
enrolled people and 35% against 450 (docs/BENCHMARKS.md, "Strangers against a growing gallery").

A :class:`StrangerCurve` is the rate at which one stranger's photo passes one enrolled person's
template (the mean of a few photos), at a grid of cosine thresholds, measured on people the
model never trained on, with their photos taken through the detector (``python -m trainer
calibrate-strangers``). Treating the enrolled people as independent gives the stranger rate at
gallery size N as ``1 - (1 - p(t))^N``. Real look-alikes cluster, so this overstates the rate
(celeba_ir at the model's threshold among 450 people: 0.63 predicted, 0.35 found), which errs on
the side of letting no one in. The curve is kept in a file beside the model
(:func:`curve_path`), like the score-norm calibration, so the weights and version stay as they are.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ModelArtifactError
from .sidecar import find_sidecar, read_sidecar, sidecar_path, write_sidecar

FORMAT = "face-stranger-curve"
KIND = "strangers"


def curve_path(model_path: str | os.PathLike[str]) -> Path:
    """Where a model's stranger curve lives: ``<model stem>.strangers.json`` beside it."""
    return sidecar_path(model_path, KIND)


def per_person_rate(stranger_rate: float, people: int) -> float:
    """The pass rate against one enrolled person that keeps the chance of a stranger passing any
    of ``people`` at ``stranger_rate`` (enrolled people taken as independent)."""
    if not 0.0 < stranger_rate < 1.0:
        raise ValueError(f"a stranger rate is in (0, 1), got {stranger_rate}")
    return -math.expm1(math.log1p(-stranger_rate) / max(int(people), 1))


@dataclass(frozen=True)
class StrangerCurve:
    """Pass rate of a stranger's photo against one enrolled person, per cosine threshold."""

    model_version: str
    photos_per_person: int        # photos averaged into each enrolled person's template when measured
    thresholds: tuple[float, ...]  # increasing
    rates: tuple[float, ...]       # non-increasing: share of (stranger photo, person) pairs above each threshold
    pairs: int                    # how many such pairs the rates were measured on
    source: str

    def __post_init__(self) -> None:
        t, r = np.asarray(self.thresholds, float), np.asarray(self.rates, float)
        if len(t) < 2 or len(t) != len(r) or np.any(np.diff(t) <= 0) or np.any(np.diff(r) > 0):
            raise ValueError("a stranger curve needs >= 2 increasing thresholds with non-increasing rates")
        if np.any(r < 0) or np.any(r > 1) or self.pairs < 1:
            raise ValueError("stranger-curve rates are shares in [0, 1], measured on at least one pair")

    @property
    def floor(self) -> float:
        """The smallest rate the curve can resolve: one pair in all it was measured on."""
        return 1.0 / self.pairs

    def rate_at(self, threshold: float) -> float:
        """Pass rate against one person at ``threshold`` (log-linear between grid points; at most
        the floor beyond the last point with a pair above it)."""
        t, r = np.asarray(self.thresholds), np.maximum(np.asarray(self.rates), self.floor)
        return float(np.exp(np.interp(threshold, t, np.log(r))))

    def threshold_for(self, stranger_rate: float, people: int) -> float:
        """The lowest cosine at which a stranger passes any of ``people`` enrolled people with
        probability at most ``stranger_rate`` (log-linear in the rate between grid points). Past
        what the curve resolves (:meth:`resolves`), the first threshold no measured pair passed."""
        t = np.asarray(self.thresholds)
        r = np.asarray(self.rates)
        logs = np.log(np.maximum(r, self.floor))
        goal = math.log(per_person_rate(stranger_rate, people))
        below = np.nonzero(logs <= goal)[0]
        if not len(below):
            empty = np.nonzero(r <= 0)[0]
            return float(t[empty[0]] if len(empty) else t[-1])
        j = int(below[0])
        if j == 0:
            return float(t[0])
        frac = (logs[j - 1] - goal) / (logs[j - 1] - logs[j])
        return float(t[j - 1] + frac * (t[j] - t[j - 1]))

    def resolves(self, stranger_rate: float, people: int) -> bool:
        """Whether the per-person rate this needs is within what the curve measured."""
        return per_person_rate(stranger_rate, people) >= self.floor

    def stranger_rate(self, threshold: float, people: int) -> float:
        """The chance that a stranger passes any of ``people`` enrolled people at ``threshold``."""
        return float(-math.expm1(max(int(people), 0) * math.log1p(-min(self.rate_at(threshold), 1 - 1e-12))))

    def save(self, path: str | os.PathLike[str]) -> None:
        write_sidecar(path, FORMAT, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "StrangerCurve":
        """Read a curve file; ModelArtifactError naming what is wrong with it."""
        body = read_sidecar(path, FORMAT, "stranger curve")
        try:
            return cls(str(body["model_version"]), int(body["photos_per_person"]),
                       tuple(float(v) for v in body["thresholds"]), tuple(float(v) for v in body["rates"]),
                       int(body["pairs"]), str(body["source"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelArtifactError(f"{path}: missing or bad field: {exc}") from None


def find_curve(model_path: str | os.PathLike[str], model_version: str) -> StrangerCurve | None:
    """The curve beside a model, if there is one and it is this model's; a log line says why a
    file there is not used."""
    return find_sidecar(model_path, KIND, model_version, StrangerCurve.load, "stranger curve not used")
