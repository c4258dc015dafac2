"""Evaluation as pure functions on scores and labels (no model, no files)."""
from __future__ import annotations

import numpy as np


def pair_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of row i of ``a`` with row i of ``b`` (rows unit norm)."""
    return np.sum(a * b, axis=1)


def threshold_at_far(negatives: np.ndarray, far: float) -> float:
    """Smallest threshold t such that the share of negatives with score > t is at most ``far``."""
    neg = np.sort(np.asarray(negatives, dtype=np.float64))[::-1]
    if len(neg) == 0:
        raise ValueError("no negative scores")
    k = int(np.floor(far * len(neg) + 1e-9))  # 0.29 * 100 is 28.999999999999996 in floating point
    return float(neg[min(k, len(neg) - 1)])


def tpr_at_fpr(positives: np.ndarray, negatives: np.ndarray, fpr: float) -> tuple[float, float]:
    """(TPR, threshold): share of positives accepted (score > threshold) at that FPR."""
    thr = threshold_at_far(negatives, fpr)
    return float(np.mean(np.asarray(positives) > thr)), thr


def roc_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    scores = np.concatenate([pos, neg])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def roc_curve(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) arrays over all thresholds, for plotting: one point per distinct score, so tied
    positives and negatives move together (no point that no threshold reaches)."""
    scores = np.concatenate([positives, negatives]).astype(np.float64)
    labels = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    ends = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1] if len(scores) else np.array([], int)
    tpr = np.concatenate([[0.0], np.cumsum(labels)[ends] / max(len(positives), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(1 - labels)[ends] / max(len(negatives), 1)])
    return fpr, tpr


def all_pairs(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every same-label pair and every different-label pair (i < j)."""
    sims = embeddings @ embeddings.T
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    scores = sims[i, j]
    return scores[same], scores[~same]


def verification_report(positives: np.ndarray, negatives: np.ndarray, fars=(1e-2, 1e-3)) -> dict:
    report = {"roc_auc": roc_auc(positives, negatives), "positives": len(positives), "negatives": len(negatives)}
    for far in fars:
        tar, thr = tpr_at_fpr(positives, negatives, far)
        report[f"tar@far={far:g}"] = tar
        report[f"threshold@far={far:g}"] = thr
    return report


def class_means(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes, unit-norm mean vector per class): the product's gallery definition."""
    classes = np.unique(labels)
    means = np.stack([embeddings[labels == c].mean(0) for c in classes])
    means /= np.linalg.norm(means, axis=1, keepdims=True) + 1e-12
    return classes, means


def closed_set_accuracy(gallery: np.ndarray, gallery_labels: np.ndarray, queries: np.ndarray,
                        query_labels: np.ndarray, ks=(1, 5)) -> dict:
    """Top-k identification of queries against per-class mean vectors."""
    classes, means = class_means(gallery, gallery_labels)
    order = np.argsort(-(queries @ means.T), axis=1)
    ranked = classes[order]
    return {f"top{k}": float(np.mean((ranked[:, :k] == query_labels[:, None]).any(axis=1))) for k in ks}


def open_set_identification(gallery: np.ndarray, gallery_labels: np.ndarray, mated: np.ndarray,
                            mated_labels: np.ndarray, non_mated: np.ndarray, fpir: float = 0.01) -> dict:
    """FNIR at a given FPIR: the threshold lets through ``fpir`` of non-enrolled probes; a mated
    probe fails if its true identity is not the top match above that threshold."""
    classes, means = class_means(gallery, gallery_labels)
    non_best = (non_mated @ means.T).max(axis=1)
    thr = threshold_at_far(non_best, fpir)
    sims = mated @ means.T
    best = sims.argmax(axis=1)
    hit = (classes[best] == mated_labels) & (sims[np.arange(len(best)), best] > thr)
    return {"fpir": fpir, "fnir": float(1 - hit.mean()), "threshold": thr,
            "mated": int(len(mated)), "non_mated": int(len(non_mated))}


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    """LFW-style accuracy: per fold, the threshold that is best on the other folds."""
    accuracies, thresholds = [], []
    candidates = np.unique(scores)
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        accs = [np.mean((scores[train] > t) == same[train]) for t in candidates]
        thr = float(candidates[int(np.argmax(accs))])
        thresholds.append(thr)
        accuracies.append(float(np.mean((scores[test] > thr) == same[test])))
    return {"accuracy_mean": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies)),
            "fold_accuracies": accuracies, "thresholds": thresholds}
