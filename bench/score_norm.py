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

``--gallery DIR`` measures the served form instead (index/cohort.py): the cohort is people of a
user's gallery, stood in for by ``--draws`` random cohorts of the calibrated size from DIR's
identities (a CelebA-layout source of people in neither celeba1k nor celeba_ir, e.g. celeba_extra's
prepared test-split crops), and the threshold is the model's calibration file
(``python -m trainer calibrate-norm``). On celeba_ir it reports, per draw, FPR and TPR at that
threshold and TPR at each draw's own FPR thresholds; the first draw also gets the paired bootstrap.

    OMP_NUM_THREADS=2 python -m bench.score_norm --threads 2 --celeba-ir
    OMP_NUM_THREADS=2 python -m bench.score_norm --threads 2 --gallery /work/data/test_crops
"""
from __future__ import annotations

import time

import numpy as np

from bench import common
from recognizer.score_norm import as_norm
from recognizer.score_norm import top_k_stats as score_stats
from trainer.score_norm import COHORT_IMAGES_PER_IDENTITY

KS = (50, 200, 1000)
ROUNDS = 1000


def top_k_stats(embeddings: np.ndarray, cohort: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each face's ``k`` highest cosines against the cohort (the
    served rule, recognizer/score_norm.py)."""
    return score_stats(embeddings @ cohort.T, k)


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


def gallery_cohort(args, rec, calibration, rounds: int) -> tuple[dict, str]:
    """The served form on celeba_ir: cohorts of people from ``args.gallery``, the calibrated threshold."""
    from recognizer.images import load_image
    from trainer import bootstrap, metrics
    from trainer.data import discover, load_crops
    from trainer.release import celeba_ir_images, celeba_ir_scores, embed_arrays
    from trainer.score_norm import training_identity_means

    source = discover(args.gallery)
    crops, ok = load_crops(source, rec.recipe, args.cache)
    pool = training_identity_means(rec, crops, source.labels, np.flatnonzero(ok), COHORT_IMAGES_PER_IDENTITY)
    q_paths, ids, d_paths = celeba_ir_images(common.require_data(args, "celeba_ir"))
    queries = embed_arrays(rec, [load_image(q) for q in q_paths])
    distractors = rec.embed_images(d_paths, "crop")
    pos, neg = celeba_ir_scores(queries, ids, distractors)
    raw = np.concatenate([pos, neg])
    table = bootstrap.query_distractor_table(ids, len(d_paths))
    size, k, thr = calibration.cohort_size, calibration.k, calibration.threshold
    rng = np.random.default_rng(0)
    draws, first = [], None
    for d in range(2 if args.quick else args.draws):
        cohort = pool[rng.choice(len(pool), size, replace=False)]
        _, normed = celeba_ir_pairs(queries, ids, distractors, top_k_stats(queries, cohort, k),
                                    top_k_stats(distractors, cohort, k))
        npos, nneg = normed[table.positive], normed[~table.positive]
        draws.append({"fpr_at_threshold": float(np.mean(nneg > thr)), "tpr_at_threshold": float(np.mean(npos > thr)),
                      **{f"tpr@fpr={f:g}": metrics.tpr_at_fpr(npos, nneg, f)[0] for f in (0.05, 0.01, 0.001)}})
        first = normed if first is None else first
    raw_row = {"fpr_at_threshold": float(np.mean(neg > rec.threshold)), "tpr_at_threshold": float(np.mean(pos > rec.threshold)),
               **{f"tpr@fpr={f:g}": metrics.tpr_at_fpr(pos, neg, f)[0] for f in (0.05, 0.01, 0.001)}}
    paired = {f"tpr@fpr={f:g}": bootstrap.compare_tar(table, first, raw, f, rounds) for f in (0.01, 0.001)}
    result = {"gallery": str(args.gallery), "pool_identities": len(pool), "cohort_size": size, "k": k,
              "threshold": thr, "raw": raw_row, "draws": draws, "first_draw_paired": paired}
    keys = ["fpr_at_threshold", "tpr_at_threshold", "tpr@fpr=0.05", "tpr@fpr=0.01", "tpr@fpr=0.001"]
    rows_out = [["raw cosine (threshold %.3f)" % rec.threshold] + [f"{raw_row[key]:.4f}" for key in keys]]
    rows_out += [[f"AS-norm, cohort draw {i} (threshold {thr:.3f})"] + [f"{d[key]:.4f}" for key in keys]
                 for i, d in enumerate(draws)]
    text = common.markdown_table(["scores", "FPR at threshold", "TPR at threshold", "TPR @ FPR 0.05", "TPR @ FPR 0.01",
                                  "TPR @ FPR 0.001"], rows_out)
    text += "\n\n" + common.markdown_table(["figure", "raw cosine", "AS-norm", "AS-norm - raw (90%)", "AS-norm ahead"],
                                           [row(f"celeba_ir, draw 0, TPR @ FPR {f}", paired[f"tpr@fpr={f}"])
                                            for f in ("0.01", "0.001")])
    text += (f"\n\ncohorts: {size} of {len(pool)} identities of {args.gallery} (at most "
             f"{COHORT_IMAGES_PER_IDENTITY} images each), K = {k}; "
             f"model {rec.version}; {rounds} identity resamplings")
    return result, text


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
    p.add_argument("--gallery", default=None, help="the served form: cohorts drawn from this source's identities")
    p.add_argument("--draws", type=int, default=10, help="cohort draws with --gallery (default 10)")
    p.add_argument("--calibration", default=None, help="default: the model's .score_norm.json beside it")
    args = p.parse_args()
    common.set_threads(args.threads)
    start = time.perf_counter()
    from recognizer import Recognizer
    from recognizer.score_norm import Calibration, calibration_path

    if args.gallery:
        rec = Recognizer(args.model)
        calibration = Calibration.load(args.calibration or calibration_path(args.model))
        if calibration.model_version != rec.version:
            raise SystemExit(f"the calibration is of model {calibration.model_version}, not {rec.version}")
        results, text = gallery_cohort(args, rec, calibration, 100 if args.quick else ROUNDS)
        return common.finish("score_norm-gallery", args, results, text, start)
    from trainer import bootstrap
    from trainer.data import model_split
    from trainer.release import celeba_ir_images, embed_arrays
    from trainer.score_norm import training_identity_means

    celeba1k = common.require_data(args, "celeba1k")
    rec = Recognizer(args.model)
    config = rec.artifact.training["config"]
    crops, labels, splits = model_split(config, celeba1k, rec.recipe, args.cache)
    per_identity = 2 if args.quick else COHORT_IMAGES_PER_IDENTITY
    cohort = training_identity_means(rec, crops, labels, splits.train, per_identity)
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
    text = (f"{table_text}\n\ncohort: {len(cohort)} training identities, at most {per_identity} images each; model {rec.version}; "
            f"{rounds} identity resamplings give the intervals")
    return common.finish("score_norm", args, results, text, start)


if __name__ == "__main__":
    raise SystemExit(main())
