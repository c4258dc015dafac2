"""trainer.metrics on inputs small enough to work out by hand: threshold calibration
(threshold_at_far), the inside of roc_curve and open-set identification (FNIR at FPIR).

Two of them pinned defects found while writing these examples (threshold_at_far's floating-point
floor, roc_curve splitting tied scores); both are fixed in trainer/metrics.py."""
from __future__ import annotations

import numpy as np
import pytest

from trainer import metrics

# ---- threshold calibration ---------------------------------------------------------------------

NEG = np.array([0.1, 0.4, 0.35, 0.8, 0.2])  # sorted: 0.8 0.4 0.35 0.2 0.1


@pytest.mark.parametrize(("far", "threshold", "passing"), [
    (0.0, 0.8, 0),     # nothing may pass: the largest negative itself is the threshold
    (0.19, 0.8, 0),    # 0.95 of a negative may pass: still none
    (0.2, 0.4, 1),     # one of five may pass (0.8 > 0.4)
    (0.39, 0.4, 1),
    (0.4, 0.35, 2),    # 0.8 and 0.4 pass
    (0.99, 0.1, 4),    # all but the smallest
    (1.0, 0.1, 4),     # k = n is clipped to the last score
])
def test_threshold_at_far_by_hand(far, threshold, passing):
    thr = metrics.threshold_at_far(NEG, far)
    assert thr == threshold
    assert int(np.sum(NEG > thr)) == passing and passing / len(NEG) <= far


def test_threshold_at_far_with_ties_and_no_negatives():
    tied = np.array([0.5, 0.5, 0.5, 0.1])
    # a quarter may pass, but no threshold lets exactly one of the three 0.5s through:
    # the threshold stays at 0.5 and nothing passes (0.4 would let three quarters through).
    assert metrics.threshold_at_far(tied, 0.25) == 0.5
    assert metrics.threshold_at_far(tied, 0.75) == 0.1
    with pytest.raises(ValueError, match="no negative"):
        metrics.threshold_at_far(np.array([]), 0.1)


def test_tpr_at_fpr_uses_that_threshold_strictly():
    pos = np.array([0.9, 0.4, 0.41, 0.3])
    tpr, thr = metrics.tpr_at_fpr(pos, NEG, 0.2)
    assert thr == 0.4 and tpr == 0.5  # 0.9 and 0.41 pass; 0.4 equals the threshold and is refused


def test_threshold_at_far_is_the_smallest_for_every_share():
    neg = np.arange(100) / 100.0  # 0.00 .. 0.99, distinct
    for far in np.round(np.arange(0.01, 1.0, 0.01), 2):
        thr = metrics.threshold_at_far(neg, far)
        allowed = int(round(far * 100))
        assert np.sum(neg > thr) == allowed, (far, thr)


# ---- roc_curve -----------------------------------------------------------------------------


def test_roc_curve_by_hand():
    pos = np.array([0.9, 0.6, 0.4])
    neg = np.array([0.7, 0.3])
    # descending: 0.9 P, 0.7 N, 0.6 P, 0.4 P, 0.3 N
    fpr, tpr = metrics.roc_curve(pos, neg)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    # without ties, the area under that curve is the AUC: 4 of the 6 (pos, neg) pairs are ordered
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(2 / 3) == metrics.roc_auc(pos, neg)
    # each point is what the threshold at that score accepts (score >= t)
    for t, f, p in zip([np.inf, 0.9, 0.7, 0.6, 0.4, 0.3], fpr, tpr):
        assert (np.mean(neg >= t), np.mean(pos >= t)) == pytest.approx((f, p))


def test_roc_curve_of_empty_sides_stays_finite():
    fpr, tpr = metrics.roc_curve(np.array([0.2, 0.1]), np.array([]))
    np.testing.assert_array_equal(tpr, [0, 0.5, 1])
    np.testing.assert_array_equal(fpr, [0, 0, 0])


def test_roc_curve_points_are_reachable_under_ties():
    pos, neg = np.array([0.5, 0.9]), np.array([0.5, 0.1])
    fpr, tpr = metrics.roc_curve(pos, neg)
    reachable = {(np.mean(neg >= t), np.mean(pos >= t)) for t in [np.inf, 0.9, 0.5, 0.1]}
    assert set(zip(fpr.tolist(), tpr.tolist())) <= reachable
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(metrics.roc_auc(pos, neg))


# ---- open-set identification ---------------------------------------------------------------


def _probe(sims: dict[int, float]) -> np.ndarray:
    """A unit vector in R^4 with the given cosines to the axes 0..2 (the rest on axis 3)."""
    v = np.zeros(4)
    for axis, s in sims.items():
        v[axis] = s
    v[3] = np.sqrt(1 - np.sum(v ** 2))
    return v


def test_open_set_identification_by_hand():
    # Gallery: class 10 from two samples whose mean points along axis 0; classes 20, 30 on axes 1, 2.
    gallery = np.array([[1, 0.1, 0, 0], [1, -0.1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=np.float64)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    labels = np.array([10, 10, 20, 30])
    # Non-enrolled probes: best similarities 0.9, 0.5, 0.3, 0.2, 0.1 (sorted: the threshold at
    # FPIR f is the (floor(5 f) + 1)-th largest of them).
    non_mated = np.stack([_probe({0: 0.9}), _probe({1: 0.5}), _probe({2: 0.3}), _probe({0: 0.2}), _probe({1: 0.1})])
    mated = np.stack([
        _probe({0: 0.8}),           # class 10 at 0.8
        _probe({1: 0.5}),           # class 20 at exactly 0.5
        _probe({0: 0.95, 2: 0.2}),  # really class 30, but closer to class 10: a wrong top match
        _probe({2: 0.7}),           # class 30 at 0.7
    ])
    mated_labels = np.array([10, 20, 30, 30])

    def run(fpir):
        return metrics.open_set_identification(gallery, labels, mated, mated_labels, non_mated, fpir=fpir)

    # FPIR 0.2: one non-mated probe (0.9) may pass, threshold 0.5. Hits: 0.8 and 0.7; 0.5 is not
    # above the threshold; the third has the wrong identity on top. FNIR = 2/4.
    assert run(0.2) == {"fpir": 0.2, "fnir": 0.5, "threshold": pytest.approx(0.5), "mated": 4, "non_mated": 5}
    # FPIR 0.4: threshold 0.3, the 0.5 probe now passes; the wrong top match never does.
    assert run(0.4)["fnir"] == 0.25 and run(0.4)["threshold"] == pytest.approx(0.3)
    # FPIR 0: threshold 0.9, above every mated score.
    assert run(0.0)["fnir"] == 1.0 and run(0.0)["threshold"] == pytest.approx(0.9)
    # FPIR 1: threshold 0.1 (clipped to the smallest), only the wrong identity fails.
    assert run(1.0)["fnir"] == 0.25
