"""How sure is a TAR measured on few identities? A bootstrap over identities (pure functions).

The split's open set holds 50 identities. At FAR 1e-3 its threshold is set by the ~600 highest
of ~620k negative pairs, and those come from a few dozen pairs of look-alike people, so one
identity more or less moves TAR by several points (celeba_ir has 51 query identities: the same
holds there). Resampling pairs would hide that (pairs are not independent); resampling whole
identities does not. Each round draws identities with replacement and gives every pair the product
of its identities' draw counts (a positive pair the count of its one identity, a pair with a
distractor the count of its query's identity); pairs between two copies of one identity are not
negatives and count for nothing.

Comparing two models on the same images, the same draws apply to both (a paired bootstrap): most
of the look-alike luck is shared, so the difference is far better determined than either TAR.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairTable:
    """Every pair (i < j) of one set of images: identity indices and, per model, the scores."""

    first: np.ndarray  # identity index (0..k-1) of image i
    second: np.ndarray  # identity index of image j, or -1 for a distractor (always counted once)
    positive: np.ndarray  # same identity
    identities: int


def pair_table(labels: np.ndarray) -> PairTable:
    """The pairs :func:`pair_scores_all` scores, with their identities as 0..k-1."""
    _, index = np.unique(labels, return_inverse=True)
    i, j = np.triu_indices(len(labels), k=1)
    return PairTable(index[i], index[j], index[i] == index[j], int(index.max()) + 1 if len(index) else 0)


def query_distractor_table(ids: np.ndarray, distractors: int) -> PairTable:
    """The pairs of :func:`trainer.release.celeba_ir_scores`, positives then negatives: every
    pair of one identity's queries (i < j), then every query against every distractor."""
    _, index = np.unique(ids, return_inverse=True)
    i, j = np.triu_indices(len(ids), k=1)
    same = index[i] == index[j]
    first = np.concatenate([index[i[same]], np.repeat(index, distractors)])
    second = np.concatenate([index[j[same]], np.full(len(index) * distractors, -1)])
    positive = np.concatenate([np.ones(int(same.sum()), bool), np.zeros(len(index) * distractors, bool)])
    return PairTable(first, second, positive, int(index.max()) + 1 if len(index) else 0)


def pair_scores_all(embeddings: np.ndarray) -> np.ndarray:
    """Cosine of every pair (i < j) of unit-norm rows, in :func:`pair_table`'s order."""
    i, j = np.triu_indices(len(embeddings), k=1)
    return (embeddings @ embeddings.T)[i, j]


def weighted_tar(pos_scores: np.ndarray, pos_weights: np.ndarray, neg_sorted: np.ndarray,
                 neg_weights_sorted: np.ndarray, far: float) -> float:
    """TAR at ``far`` when each pair counts ``weight`` times. ``neg_sorted`` is in descending
    order; the threshold is the highest negative score that at most ``far`` of the negative
    weight lies above (:func:`trainer.metrics.threshold_at_far` with all weights 1)."""
    total = neg_weights_sorted.sum()
    above = np.cumsum(neg_weights_sorted)
    k = int(np.searchsorted(above, far * total * (1 + 1e-12), side="right"))
    threshold = neg_sorted[min(k, len(neg_sorted) - 1)]
    return float(pos_weights[pos_scores > threshold].sum() / pos_weights.sum())


def bootstrap_tar(table: PairTable, scores: list[np.ndarray], far: float, rounds: int = 1000,
                  seed: int = 0) -> np.ndarray:
    """(rounds, len(scores)) TARs at ``far``, each round one draw of identities shared by every
    score array (one array per model, all over the same images)."""
    if not scores:
        raise ValueError("no scores to resample")
    rng = np.random.default_rng(seed)
    pos = table.positive
    models = []  # per model: positive scores, then negatives sorted high to low with their identities
    for s in scores:
        neg = s[~pos]
        order = np.argsort(-neg, kind="stable")
        models.append((s[pos], neg[order], table.first[~pos][order], table.second[~pos][order]))
    pos_first = table.first[pos]
    out = np.empty((rounds, len(scores)))
    for r in range(rounds):
        counts = np.bincount(rng.integers(0, table.identities, table.identities),
                             minlength=table.identities).astype(np.float64)
        counts = np.append(counts, 1.0)  # index -1: a distractor, counted once
        pos_w = counts[pos_first]
        for m, (pos_s, neg_s, first, second) in enumerate(models):
            out[r, m] = weighted_tar(pos_s, pos_w, neg_s, counts[first] * counts[second], far)
    return out


def summarise(values: np.ndarray, level: float = 0.9) -> dict:
    """Mean, standard deviation and the central ``level`` interval of bootstrap values."""
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return {"mean": float(np.mean(values)), "sd": float(np.std(values)), f"ci{round(level * 100)}": [float(lo), float(hi)]}


def compare_tar(table: PairTable, a: np.ndarray, b: np.ndarray, far: float, rounds: int = 1000,
                seed: int = 0) -> dict:
    """Model A against model B on the same pairs: each one's TAR spread and the paired difference
    A - B, with the share of rounds in which A is ahead (ties count half)."""
    draws = bootstrap_tar(table, [a, b], far, rounds, seed)
    diff = draws[:, 0] - draws[:, 1]
    point = [plain_tar(table, s, far) for s in (a, b)]
    return {"far": far, "rounds": rounds, "a": {"point": point[0], **summarise(draws[:, 0])},
            "b": {"point": point[1], **summarise(draws[:, 1])},
            "a_minus_b": {"point": point[0] - point[1], **summarise(diff)},
            "a_ahead": float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))}


def plain_tar(table: PairTable, scores: np.ndarray, far: float) -> float:
    """The figure itself, every identity counted once (no resampling)."""
    neg = scores[~table.positive]
    order = np.argsort(-neg, kind="stable")
    return weighted_tar(scores[table.positive], np.ones(int(table.positive.sum())), neg[order],
                        np.ones(len(neg)), far)
