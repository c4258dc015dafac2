"""``python -m trainer calibrate-strangers``: a model's stranger curve (pure functions + CLI body).

The curve (recognizer/stranger.py) is the rate at which a photo of one person passes another
person's enrolled template, per cosine threshold. It is measured on the people the model never
trained on (its split's held-out identities), with their photos taken through the detector and
alignment as the service takes uploads. Training people would give 25x more pairs, but the
model has learnt to keep them apart: on the shipped model their rates are 2-6x lower than unseen
people's at the thresholds that matter (docs/BENCHMARKS.md, "Strangers against a growing
gallery"), so a curve from them would let strangers in. The report shows both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from recognizer import Recognizer
from recognizer.stranger import StrangerCurve, curve_path

from .data import discover, model_split

PHOTOS_PER_PERSON = 3  # a typical enrollment: a few photos averaged into the person's template
GRID = tuple(round(float(t), 3) for t in np.arange(0.20, 0.951, 0.01))
REPORT_THRESHOLDS = (0.40, 0.45, 0.50, 0.55, 0.60, 0.65)
DRAWS = 5  # template draws pooled: 50 people give few pairs, and which photos are averaged moves the tail


def templates(embeddings: np.ndarray, labels: np.ndarray, per_person: int,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each person's template: the unit mean of ``per_person`` of their photos, drawn at random
    (all of them when they have fewer). Returns (templates, their labels)."""
    rng = np.random.default_rng(seed)
    people = np.unique(labels)
    out = np.empty((len(people), embeddings.shape[1]), np.float32)
    for n, person in enumerate(people):
        rows = np.flatnonzero(labels == person)
        mean = embeddings[rng.permutation(rows)[:per_person]].mean(0)
        out[n] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return out, people


def impostor_scores(embeddings: np.ndarray, labels: np.ndarray, per_person: int = PHOTOS_PER_PERSON,
                    seed: int = 0) -> np.ndarray:
    """Cosine of every photo against every *other* person's template, sorted (float32)."""
    temps, people = templates(embeddings, labels, per_person, seed)
    if len(people) < 2:
        raise ValueError("need photos of at least 2 people to pair strangers")
    scores = embeddings.astype(np.float32) @ temps.T
    scores = scores[labels[:, None] != people[None, :]]
    return np.sort(scores)


def rates_above(sorted_scores: np.ndarray, thresholds: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """Share of ``sorted_scores`` strictly above each threshold."""
    above = len(sorted_scores) - np.searchsorted(sorted_scores, np.asarray(thresholds, np.float32), side="right")
    return above / len(sorted_scores)


def service_view(rec: Recognizer, paths: list[Path], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the largest face of each photo as the service finds it, with their labels
    (photos without a face are left out)."""
    kept = [(found[0].embedding, label) for path, label in zip(paths, labels)
            if (found := rec.analyze(str(path)))]
    if not kept:
        return np.zeros((0, rec.dim), np.float32), labels[:0]
    return np.stack([e for e, _ in kept]), np.array([label for _, label in kept])


def pooled_scores(embeddings: np.ndarray, labels: np.ndarray, draws: int) -> np.ndarray:
    """Impostor scores over ``draws`` independent draws of each person's template photos, sorted."""
    return np.sort(np.concatenate([impostor_scores(embeddings, labels, seed=d) for d in range(draws)]))


def build_curve(version: str, embeddings: np.ndarray, labels: np.ndarray, source: str,
                draws: int = DRAWS, grid: tuple[float, ...] = GRID) -> StrangerCurve:
    """The stranger curve of ``embeddings`` (unit rows) of labelled people."""
    scores = pooled_scores(embeddings, labels, draws)
    return StrangerCurve(version, PHOTOS_PER_PERSON, tuple(float(t) for t in grid),
                         tuple(float(r) for r in rates_above(scores, grid)), int(len(scores)), source)


def curve_from_photos(rec: Recognizer, paths: list[Path], labels: np.ndarray, whose: str, draws: int,
                      out: Path) -> tuple[StrangerCurve, dict]:
    """The curve of these labelled photos taken through the detector, written to ``out``, with the
    report's common part. ``whose`` names the people in the curve's source and in errors."""
    held, held_labels = service_view(rec, paths, labels)
    people = len(np.unique(held_labels))
    if people < 2:
        raise ValueError(f"{whose} hold {people} person(s) with a face found: too few to pair strangers "
                         "(a curve needs at least 2 people)")
    curve = build_curve(rec.version, held, held_labels,
                        f"{len(held)} photos of {people} people ({whose}) through the detector and alignment, each "
                        f"against every other's template of {PHOTOS_PER_PERSON} photos, {draws} draws of the templates",
                        draws)
    curve.save(out)
    return curve, {"photos": len(held), "people": people, "pairs": curve.pairs, "thresholds": list(REPORT_THRESHOLDS),
                   "service_view": [curve.rate_at(t) for t in REPORT_THRESHOLDS]}


def calibrate_people(model: Path, people_dir: Path, out: Path | None = None,
                     draws: int = DRAWS) -> tuple[StrangerCurve, dict]:
    """The curve measured on a folder of your own people (``<person>/<photo>``, or CelebA's layout)
    instead of the split's held-out ones: photos from your cameras, of people the model never
    trained on. Written beside the model (or to ``out``)."""
    found = discover(people_dir)
    return curve_from_photos(Recognizer(model), [Path(p) for p in found.paths], np.asarray(found.labels),
                             f"the people in {people_dir}", draws, out or curve_path(model))


def calibrate_model(model: Path, celeba1k: Path, cache_dir: str | None = ".cache",
                    out: Path | None = None, draws: int = DRAWS,
                    training_people: bool = False) -> tuple[StrangerCurve, dict]:
    """Measure ``model``'s curve on its split's held-out people as the service sees their photos,
    write it beside the model (or to ``out``), and report the rates at a few thresholds beside those
    of the same people in CelebA's frames (and, with ``training_people``, of the people it trained on:
    minutes more)."""
    rec = Recognizer(model)
    config = rec.artifact.training.get("config")
    if not config:
        raise ValueError(f"{model} carries no training config: its held-out people are unknown")
    crops, labels, splits = model_split(config, celeba1k, rec.recipe, cache_dir)
    paths = discover(celeba1k, config.get("limit_identities")).paths
    curve, report = curve_from_photos(rec, [paths[r] for r in splits.open_set], labels[splits.open_set],
                                      "the split's held-out people", draws, out or curve_path(model))
    frames = pooled_scores(rec.embed(crops[splits.open_set]), labels[splits.open_set], draws)
    report["held_out_frames"] = [float(r) for r in rates_above(frames, REPORT_THRESHOLDS)]
    if training_people:
        train = impostor_scores(rec.embed(crops[splits.train]), labels[splits.train])
        report["training_people"] = [float(r) for r in rates_above(train, REPORT_THRESHOLDS)]
    return curve, report


def best_matches(probes: np.ndarray, templates: np.ndarray, template_labels: np.ndarray,
                 scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each probe's best template, as identify picks it: (its label, its score). ``scores`` maps
    (probes, templates) to a score matrix, higher is closer (default: the cosine of unit rows)."""
    matrix = probes @ templates.T if scores is None else scores(probes, templates)
    if not matrix.shape[0]:
        return template_labels[:0], np.zeros(0)
    best = matrix.argmax(1)
    return template_labels[best], matrix[np.arange(len(best)), best]


def identify_rates(stranger_best: np.ndarray, mated_best: np.ndarray, mated_right: np.ndarray,
                   threshold: float) -> tuple[float, float]:
    """Open-set identification at ``threshold``, as identify decides (the best match if it reaches
    the threshold): (FPIR, the share of strangers matched to anyone; FNIR, the share of enrolled
    people's photos not answered with their own person). ``mated_right``: is the best one theirs."""
    fpir = float(np.mean(stranger_best >= threshold)) if len(stranger_best) else float("nan")
    fnir = float(1.0 - np.mean(mated_right & (mated_best >= threshold))) if len(mated_best) else float("nan")
    return fpir, fnir


def fnir_at_fpir(stranger_best: np.ndarray, mated_best: np.ndarray, mated_right: np.ndarray,
                 fpir: float) -> tuple[float, float]:
    """(threshold, FNIR) at the lowest threshold that matches at most ``fpir`` of the strangers:
    the trade-off itself, for comparing two models at the same stranger rate."""
    ordered = np.sort(stranger_best)[::-1]
    allowed = int(np.floor(fpir * len(ordered)))  # strangers that may pass
    threshold = float(np.nextafter(ordered[allowed], np.inf)) if allowed < len(ordered) else float(ordered[-1])
    return threshold, identify_rates(stranger_best, mated_best, mated_right, threshold)[1]
