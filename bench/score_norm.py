"""Would adaptive score normalisation (AS-norm) against a cohort of people help the shipped model?

At FAR 1e-3 the threshold is set by a few dozen pairs of look-alike people (docs/BENCHMARKS.md).
AS-norm, from speaker verification, marks down faces that resemble many people: each face's K
highest cosines against a cohort give it a mean and a spread, and a pair's score becomes the
average of its cosine standardised by either side's. No training; the cost at serving time would
be one product with the cohort per face.

Cohort: the unit-norm mean embedding of each of celeba1k's training identities (at most 8 images
each) under the model. Measured on the split's 50 held-out identities (val, where K was chosen)
and, with ``--celeba-ir``, on celeba_ir at ``--celeba-ir-k`` only (the test set: once, after the
choice), each with the paired identity bootstrap against the raw cosine (trainer/bootstrap.py).

    OMP_NUM_THREADS=2 python -m bench.score_norm --threads 2 --celeba-ir
"""
from __future__ import annotations

import time

import numpy as np

from bench import common

KS = (50, 200, 1000)
COHORT_IMAGES_PER_IDENTITY = 8
ROUNDS = 1000


def top_k_stats(embeddings: np.ndarray, cohort: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each face's ``k`` highest cosines against the cohort."""
    top = -np.sort(-(embeddings @ cohort.T), axis=1)[:, :k]
    return top.mean(1), top.std(1)


def as_norm(scores: np.ndarray, first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Cosines standardised by both sides' cohort statistics (per pair: ``first`` and ``second``
    hold the two faces' means and spreads, aligned with ``scores``), averaged."""
    return 0.5 * ((scores - first[0]) / first[1] + (scores - second[0]) / second[1])


def val_pairs(emb: np.ndarray, stats: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(raw, normalised) scores of every pair i < j, in :func:`trainer.bootstrap.pair_table` order."""
    from trainer.bootstrap import pair_scores_all

    i, j = np.triu_indices(len(emb), k=1)
    raw = pair_scores_all(emb)
    return raw, as_norm(raw, (stats[0][i], stats[1][i]), (stats[0][j], stats[1][j]))


def celeba_ir_pairs(queries: np.ndarray, ids: np.ndarray, distractors: np.ndarray, q_stats, d_stats):
    """(raw, normalised) scores in :func:`trainer.bootstrap.query_distractor_table` order."""
    i, j = np.triu_indices(len(queries), k=1)
    same = ids[i] == ids[j]
    i, j = i[same], j[same]
    pos = np.sum(queries[i] * queries[j], axis=1)
    pos_n = as_norm(pos, (q_stats[0][i], q_stats[1][i]), (q_stats[0][j], q_stats[1][j]))
    neg = queries @ distractors.T
    neg_n = 0.5 * ((neg - q_stats[0][:, None]) / q_stats[1][:, None] + (neg - d_stats[0][None]) / d_stats[1][None])
    return np.concatenate([pos, neg.ravel()]), np.concatenate([pos_n, neg_n.ravel()])


def row(name: str, comparison: dict) -> list[str]:
    a, b, d = comparison["a"], comparison["b"], comparison["a_minus_b"]
    return [name, f"{b['point']:.3f}", f"{a['point']:.3f}", f"{d['point']:+.3f} ({d['ci90'][0]:+.3f} to {d['ci90'][1]:+.3f})",
            f"{comparison['a_ahead']:.0%}"]


def main() -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=str(common.DEFAULT_MODEL))
    p.add_argument("--cache", default=str(common.ROOT / ".cache"))
    p.add_argument("--celeba-ir", action="store_true", help="also celeba_ir, at --celeba-ir-k only (the test set)")
    p.add_argument("--celeba-ir-k", type=int, default=200)
    args = p.parse_args()
    common.set_threads(args.threads)
    start = time.perf_counter()
    from recognizer import Recognizer
    from trainer import bootstrap, metrics
    from trainer.data import model_split, sample_rows
    from trainer.release import celeba_ir_images, embed_arrays

    celeba1k = common.require_data(args, "celeba1k")
    rec = Recognizer(args.model)
    config = rec.artifact.training["config"]
    crops, labels, splits = model_split(config, celeba1k, rec.recipe, args.cache)
    per_identity = 2 if args.quick else COHORT_IMAGES_PER_IDENTITY
    cohort_rows = np.concatenate([sample_rows(splits.train[labels[splits.train] == c], per_identity, 0)
                                  for c in np.unique(labels[splits.train])])
    _, cohort = metrics.class_means(rec.embed(crops[cohort_rows]), labels[cohort_rows])  # unit-norm means
    val = rec.embed(crops[splits.open_set])
    table = bootstrap.pair_table(labels[splits.open_set])
    rounds = 100 if args.quick else ROUNDS
    ks = [k for k in KS if k < len(cohort)] + [len(cohort)]
    results: dict = {"model": rec.version, "cohort_identities": len(cohort), "rounds": rounds, "val": {}}
    rows = []
    for k in ks:
        raw, normed = val_pairs(val, top_k_stats(val, cohort, k))
        results["val"][k] = {f"tar@far={far:g}": bootstrap.compare_tar(table, normed, raw, far, rounds)
                             for far in (1e-2, 1e-3)}
        rows += [row(f"val, K = {k}, TAR @ FAR {far:g}", results["val"][k][f"tar@far={far:g}"]) for far in (1e-2, 1e-3)]
    ir_root = common.data_dir(args, "celeba_ir") if args.celeba_ir else None
    if ir_root is not None:
        from recognizer.images import load_image

        k = min(args.celeba_ir_k, len(cohort))
        q_paths, ids, d_paths = celeba_ir_images(ir_root)
        queries = embed_arrays(rec, [load_image(q) for q in q_paths])
        distractors = rec.embed_images(d_paths, "crop")
        raw, normed = celeba_ir_pairs(queries, ids, distractors, top_k_stats(queries, cohort, k),
                                      top_k_stats(distractors, cohort, k))
        ir_table = bootstrap.query_distractor_table(ids, len(d_paths))
        results["celeba_ir"] = {"k": k, **{f"tpr@fpr={f:g}": bootstrap.compare_tar(ir_table, normed, raw, f, rounds)
                                           for f in (0.05, 0.01, 0.001)}}
        rows += [row(f"celeba_ir, K = {k}, TPR @ FPR {f:g}", results["celeba_ir"][f"tpr@fpr={f:g}"])
                 for f in (0.05, 0.01, 0.001)]
    table_text = common.markdown_table(["figure", "raw cosine", "AS-norm", "AS-norm - raw (90%)", "AS-norm ahead"], rows)
    text = (f"{table_text}\n\ncohort: {len(cohort)} training identities, {len(cohort_rows)} images; model {rec.version}; "
            f"{rounds} identity resamplings give the intervals")
    return common.finish("score_norm", args, results, text, start)


if __name__ == "__main__":
    raise SystemExit(main())
