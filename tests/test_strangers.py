"""The stranger curve: its arithmetic, its file, and whether a threshold taken from it keeps
strangers out of a gallery of people it was not measured on (synthetic people, so the check is
exact and fast; bench.strangers does the same on real faces)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import face_data, requires_face_data

from recognizer.artifact import ModelArtifact
from recognizer.errors import ModelArtifactError
from recognizer.stranger import StrangerCurve, curve_path, find_curve, per_person_rate
from trainer.strangers import (best_matches, build_curve, fnir_at_fpir, identify_rates, impostor_scores,
                               rates_above, templates)

DIM = 24


def people(n: int, photos: int, seed: int, spread: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic people: a random direction each, photos scattered around it (unit rows)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, photos, axis=0) + spread * rng.standard_normal((n * photos, DIM)) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(n), photos)


def simple_curve(**changes) -> StrangerCurve:
    fields = dict(model_version="v1", photos_per_person=3, thresholds=(0.3, 0.4, 0.5, 0.6, 0.7),
                  rates=(1e-2, 1e-3, 1e-4, 1e-5, 0.0), pairs=1_000_000, source="made up")
    return StrangerCurve(**{**fields, **changes})


def test_per_person_rate_inverts_the_gallery_rate():
    for rate, n in ((0.01, 1), (0.01, 50), (0.05, 450), (0.2, 10_000)):
        p = per_person_rate(rate, n)
        assert 1 - (1 - p) ** n == pytest.approx(rate, rel=1e-9)
    with pytest.raises(ValueError):
        per_person_rate(0.0, 10)


def test_threshold_rises_with_the_gallery_and_falls_with_the_allowed_rate():
    curve = simple_curve()
    by_size = [curve.threshold_for(0.01, n) for n in (1, 10, 100, 900)]
    assert by_size == sorted(by_size) and by_size[0] < by_size[-1]
    assert curve.threshold_for(0.05, 100) < curve.threshold_for(0.01, 100)
    # at the threshold it gives, the curve's own prediction is the target (log-linear both ways)
    for n in (1, 10, 100, 900):
        t = curve.threshold_for(0.01, n)
        assert curve.stranger_rate(t, n) == pytest.approx(0.01, rel=1e-6)


def test_past_what_the_curve_resolves_it_says_so_and_takes_the_first_empty_threshold():
    curve = simple_curve()
    assert curve.floor == 1e-6
    assert curve.resolves(0.01, 100) and not curve.resolves(0.01, 100_000)
    assert curve.threshold_for(0.01, 100_000) == 0.7  # the first grid point no measured pair passed
    assert curve.threshold_for(0.5, 1) == 0.3  # looser than the grid's first point: its first point


def test_bad_curves_are_refused():
    with pytest.raises(ValueError):
        simple_curve(rates=(1e-3, 1e-2, 1e-4, 1e-5, 0.0))  # a rate that rises with the threshold
    with pytest.raises(ValueError):
        simple_curve(thresholds=(0.3, 0.3, 0.5, 0.6, 0.7))
    with pytest.raises(ValueError):
        simple_curve(pairs=0)


def test_the_file_round_trips_and_belongs_to_one_model(tmp_path, caplog):
    curve = simple_curve()
    path = curve_path(tmp_path / "facerec.pt")
    assert path.name == "facerec.strangers.json"
    curve.save(path)
    assert StrangerCurve.load(path) == curve
    assert find_curve(tmp_path / "facerec.pt", "v1") == curve
    with caplog.at_level(logging.WARNING):
        assert find_curve(tmp_path / "facerec.pt", "v2") is None  # another model's
    assert "is for model v1, not v2" in caplog.text
    assert find_curve(tmp_path / "other.pt", "v1") is None
    body = json.loads(path.read_text())
    path.write_text(json.dumps({**body, "rates": [0.1, 0.2, 0.0, 0.0, 0.0]}))
    with pytest.raises(ModelArtifactError, match="missing or bad field"):
        StrangerCurve.load(path)
    assert find_curve(tmp_path / "facerec.pt", "v1") is None
    path.write_text(json.dumps({**body, "format": "face-score-norm"}))
    with pytest.raises(ModelArtifactError, match="not a stranger curve"):
        StrangerCurve.load(path)


def test_impostor_scores_pair_every_photo_with_every_other_persons_template_only():
    x, labels = people(5, 4, seed=1)
    scores = impostor_scores(x, labels, per_person=3)
    assert len(scores) == 20 * 4  # 20 photos, 4 other people each
    assert np.all(np.diff(scores) >= 0)
    temps, who = templates(x, labels, 3)
    full = x @ temps.T
    assert np.allclose(np.sort(full[labels[:, None] != who[None, :]]), scores)
    assert rates_above(np.array([0.1, 0.2, 0.3, 0.4], np.float32), (0.0, 0.25, 0.4)).tolist() == [1.0, 0.5, 0.0]


def test_identify_rates_and_the_trade_off_at_a_stranger_rate():
    stranger_best = np.array([0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.0, 0.0, 0.0])
    mated_best = np.array([0.95, 0.6, 0.45, 0.3])
    right = np.array([True, True, False, True])
    assert identify_rates(stranger_best, mated_best, right, 0.45) == (0.2, 0.5)
    threshold, fnir = fnir_at_fpir(stranger_best, mated_best, right, 0.1)
    assert 0.5 < threshold <= 0.6 and np.mean(stranger_best >= threshold) <= 0.1
    assert fnir == 0.5  # the 0.3 photo falls below, and the 0.45 one went to the wrong person
    labels, best = best_matches(np.eye(3)[:2], np.eye(3), np.array([7, 8, 9]))
    assert labels.tolist() == [7, 8] and best.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("target", [0.01, 0.05])
def test_a_threshold_from_one_set_of_people_keeps_strangers_out_of_a_gallery_of_others(target):
    """Measured on 200 people, used on 600 others: at every gallery size the share of strangers
    matched to anyone comes out at the target. These people are spread evenly, so treating them as
    independent is nearly exact here; real faces cluster, and there it errs low (bench.strangers)."""
    x, labels = people(200, 6, seed=2)
    curve = build_curve("v", x, labels, "synthetic", draws=3, grid=tuple(np.round(np.arange(0.0, 1.0, 0.01), 2)))
    y, who = people(600, 6, seed=3)
    rng = np.random.default_rng(4)
    for size in (10, 100, 400):
        t = curve.threshold_for(target, size)
        found = []
        for _ in range(5):
            enrolled = rng.permutation(600)[:size]
            rows = [np.flatnonzero(who == p)[:3] for p in enrolled]
            means = np.stack([y[r].mean(0) for r in rows])
            temps = means / np.linalg.norm(means, axis=1, keepdims=True)
            strangers = y[~np.isin(who, enrolled)]
            mated = np.concatenate([np.flatnonzero(who == p)[3:] for p in enrolled])
            got, best = best_matches(y[mated], temps, enrolled)
            stranger_best = best_matches(strangers, temps, enrolled)[1]
            found.append(identify_rates(stranger_best, best, got == who[mated], t)[0])
        assert 0.6 * target <= np.mean(found) <= 1.5 * target, (size, t, found)


@requires_face_data
def test_a_curve_from_your_own_people_through_the_cli(tmp_path):
    """`calibrate-strangers --people DIR`: four real people, one photo each, through the detector
    and the shipped model; the curve is written where asked and belongs to that model."""
    import shutil
    import subprocess
    import sys

    from recognizer.artifact import SHIPPED_MODEL

    people = tmp_path / "people"
    shutil.copytree(face_data() / "facenet_samples" / "test_images", people)
    (people / "nobody").mkdir()  # a person without a photo adds nothing
    out = tmp_path / "curve.json"
    done = subprocess.run([sys.executable, "-m", "trainer", "calibrate-strangers", "--model", str(SHIPPED_MODEL),
                           "--people", str(people), "--out", str(out), "--draws", "2", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["report"]["people"] == 4 and report["pairs"] == 2 * 4 * 3  # 2 draws, 4 photos x 3 others
    curve = StrangerCurve.load(out)
    assert curve.pairs == 24 and str(people) in curve.source
    assert curve.rates[0] > 0 and curve.rates[-1] == 0.0  # some low cosines pass, nothing near 0.95 does
    assert ModelArtifact.load(SHIPPED_MODEL).version == curve.model_version

    alone = tmp_path / "alone"
    shutil.copytree(face_data() / "facenet_samples" / "test_images" / "paul_rudd", alone / "paul_rudd")
    refused = subprocess.run([sys.executable, "-m", "trainer", "calibrate-strangers", "--model", str(SHIPPED_MODEL),
                              "--people", str(alone), "--out", str(tmp_path / "no.json")],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "a curve needs at least 2 people" in refused.stderr
    assert not (tmp_path / "no.json").exists()
