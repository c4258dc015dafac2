"""Strangers against a growing gallery: open-set identification (1:N) on celeba_ir.

Identify answers with the best of N enrolled people, so the chance that a stranger matches
someone grows with N. Each draw enrolls N people (the 51 query people first, then distractor
people) with the mean of ``--photos-per-person`` photos, as an enrollment of a few photos would.
Every photo of a person not enrolled is a stranger; every photo of an enrolled query person that
is not in their template is a probe that should come back as them. Per N it reports

- FPIR, the share of strangers matched to someone, and FNIR, the share of enrolled people's
  photos not identified as themselves, at the model's threshold and at the threshold the
  service's STRANGER_RATE setting would use (the model's stranger curve, recognizer/stranger.py,
  never below the model's threshold);
- what the curve predicts for each.

celeba_ir was never used to build the curve (it is measured on the training split's held-out
people), so this is an out-of-sample check of it. ``--dlib`` adds face_recognition (dlib) on the
same draws: each model's FNIR with its threshold set on the draw's own strangers at each rate, to
compare the two trade-offs (an oracle threshold, not a rule a service could use).

    OMP_NUM_THREADS=2 python -m bench.strangers --threads 2 [--dlib]
"""
from __future__ import annotations

import time

import numpy as np

from bench import common

SIZES = (10, 50, 250, 450)
RATES = (0.01, 0.05)
DRAWS = 20


def distractor_identities(paths: list, identity_file) -> np.ndarray:
    """CelebA identity of each distractor image (celeba_ir names its files as CelebA does)."""
    ident = {}
    with open(identity_file) as fh:
        for line in fh:
            name, person = line.split()
            ident[name] = int(person)
    return np.array([ident[p.name] for p in paths])


def draw_gallery(rng: np.random.Generator, q_ids: np.ndarray, d_ids: np.ndarray, size: int,
                 per_person: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """One enrollment of ``size`` people over the pooled photos (queries, then distractors).
    Returns (template rows per person, enrolled labels, mated probe rows, stranger rows)."""
    labels = np.concatenate([q_ids, d_ids])
    query_people = rng.permutation(np.unique(q_ids))
    other_people = rng.permutation(np.setdiff1d(np.unique(d_ids), query_people))
    enrolled = np.concatenate([query_people[:size], other_people[:max(0, size - len(query_people))]])
    if len(enrolled) < size:
        raise ValueError(f"celeba_ir has {len(enrolled)} people to enroll, not {size}")
    rows, mated = [], []
    for person in enrolled:
        photos = rng.permutation(np.flatnonzero(labels == person))
        rows.append(photos[:per_person])
        if person in query_people:
            mated.extend(photos[per_person:])
    strangers = np.flatnonzero(~np.isin(labels, enrolled))
    return rows, enrolled, np.array(mated, int), strangers


def unit_means(vectors: np.ndarray, rows: list[np.ndarray]) -> np.ndarray:
    """Our templates: the unit mean of each person's photos (index/gallery.py)."""
    means = np.stack([vectors[r].mean(0) for r in rows])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def plain_means(vectors: np.ndarray, rows: list[np.ndarray]) -> np.ndarray:
    """dlib's templates: the mean descriptor (it compares by euclidean distance)."""
    return np.stack([vectors[r].mean(0) for r in rows])


def dlib_scores(probes: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """Minus the euclidean distance (face_recognition's measure), higher is closer."""
    from bench.accuracy_vs_dlib import _scores

    return _scores("dlib", probes, templates)


def dlib_embeddings(paths: list) -> np.ndarray:
    """face_recognition's descriptors of the crops, from the bench's dlib cache when there."""
    from bench.accuracy_vs_dlib import Dlib, embed_both

    return embed_both(None, Dlib(), paths, "crop")[1]


def main() -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=str(common.DEFAULT_MODEL))
    p.add_argument("--curve", default=None, help="default: the model's .strangers.json beside it")
    p.add_argument("--identities", default=None,
                   help="CelebA's identity file (default: DATA/celeba_extra/identity_CelebA_full.txt)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="enrolled people per gallery")
    p.add_argument("--rates", default=",".join(map(str, RATES)), help="target stranger rates")
    p.add_argument("--draws", type=int, default=DRAWS)
    p.add_argument("--photos-per-person", type=int, default=None, help="default: the curve's")
    p.add_argument("--dlib", action="store_true", help="also face_recognition (dlib) at the same stranger rates")
    args = p.parse_args()
    common.set_threads(args.threads)
    start = time.perf_counter()
    from recognizer import Recognizer
    from recognizer.images import load_image
    from recognizer.stranger import StrangerCurve, curve_path
    from trainer.release import celeba_ir_images, embed_arrays
    from trainer.strangers import best_matches, fnir_at_fpir, identify_rates

    ir = common.require_data(args, "celeba_ir")
    identity_file = args.identities or common.require_data(args, "celeba_extra") / "identity_CelebA_full.txt"
    rec = Recognizer(args.model)
    curve = StrangerCurve.load(args.curve or curve_path(args.model))
    if curve.model_version != rec.version:
        raise SystemExit(f"the stranger curve is of model {curve.model_version}, not {rec.version}")
    per_person = args.photos_per_person or curve.photos_per_person
    q_paths, q_ids, d_paths = celeba_ir_images(ir)
    d_ids = distractor_identities(d_paths, identity_file)
    embeddings = np.concatenate([embed_arrays(rec, [load_image(q) for q in q_paths]), rec.embed_images(d_paths, "crop")])
    labels = np.concatenate([q_ids, d_ids])
    sizes = [int(v) for v in args.sizes.split(",")][: 2 if args.quick else None]
    rates = [float(v) for v in args.rates.split(",")]
    draws = 3 if args.quick else args.draws
    dlib = dlib_embeddings(q_paths + d_paths) if args.dlib else None
    rng = np.random.default_rng(0)
    results: dict = {"model": rec.version, "threshold": rec.threshold, "photos_per_person": per_person,
                     "draws": draws, "curve_source": curve.source, "sizes": {}, "same_fpir": {}}
    rows, same_rows = [], []
    for size in sizes:
        rules = {"model": rec.threshold, **{f"stranger_rate={r:g}": max(rec.threshold, curve.threshold_for(r, size))
                                            for r in rates}}
        measured: dict[str, list] = {name: [] for name in rules}
        traded: dict[str, list] = {f"{who}@{r:g}": [] for who in ("ours", "dlib") if who == "ours" or dlib is not None
                                   for r in rates}
        for _ in range(draws):
            template_rows, enrolled, mated, strangers = draw_gallery(rng, q_ids, d_ids, size, per_person)
            sides = {"ours": (embeddings, unit_means, None)}
            if dlib is not None:
                sides["dlib"] = (dlib, plain_means, dlib_scores)
            for who, (vectors, means, scores) in sides.items():
                templates = means(vectors, template_rows)
                stranger_best = best_matches(vectors[strangers], templates, enrolled, scores)[1]
                found, mated_best = best_matches(vectors[mated], templates, enrolled, scores)
                mated_right = found == labels[mated]
                if who == "ours":
                    for name, thr in rules.items():
                        measured[name].append(identify_rates(stranger_best, mated_best, mated_right, thr))
                for r in rates:
                    traded[f"{who}@{r:g}"].append(fnir_at_fpir(stranger_best, mated_best, mated_right, r)[1])
        results["sizes"][size] = {}
        for name, thr in rules.items():
            fpir, fnir = np.array(measured[name]).T
            row = {"threshold": thr, "fpir": float(fpir.mean()), "fpir_range": [float(fpir.min()), float(fpir.max())],
                   "fnir": float(fnir.mean()), "predicted_fpir": curve.stranger_rate(thr, size),
                   "within_curve": name == "model" or curve.resolves(float(name.split("=")[1]), size)}
            results["sizes"][size][name] = row
            rows.append([size, name, f"{thr:.3f}", f"{row['predicted_fpir']:.3f}", f"{row['fpir']:.3f}",
                         f"{row['fpir_range'][0]:.3f}-{row['fpir_range'][1]:.3f}", f"{row['fnir']:.3f}"])
        results["same_fpir"][size] = {key: float(np.mean(v)) for key, v in traded.items()}
        for r in rates:
            same_rows.append([size, f"{r:g}", f"{results['same_fpir'][size][f'ours@{r:g}']:.3f}",
                              f"{results['same_fpir'][size][f'dlib@{r:g}']:.3f}" if dlib is not None else ""])
    text = common.markdown_table(["enrolled people", "threshold rule", "cosine", "FPIR the curve predicts",
                                  "FPIR measured (mean of draws)", "range over draws", "FNIR measured"], rows)
    text += "\n\n" + common.markdown_table(["enrolled people", "FPIR (threshold set on these strangers)", "FNIR ours",
                                             "FNIR dlib"], same_rows)
    text += (f"\n\nmodel {rec.version}; celeba_ir ({len(q_paths)} query photos of {len(np.unique(q_ids))} people, "
             f"{len(d_paths)} distractor photos of {len(np.unique(d_ids))} people); each enrolled person the mean of "
             f"{per_person} photos; {draws} draws per size; the second table sets each model's threshold on the "
             f"draw's own strangers (an oracle, to compare the two trade-offs, not a rule the service could use)")
    figure = plot(results, rates)
    return common.finish("strangers", args, results, text, start, [common.save_figure(figure, "strangers", args)])


def plot(results: dict, rates: list[float]):
    """FPIR and FNIR against gallery size: the model's threshold and each stranger-rate rule."""
    fig, (left, right) = common.new_figure(2)
    sizes = sorted(results["sizes"])
    names = ["model"] + [f"stranger_rate={r:g}" for r in rates]
    for name in names:
        fpir = [results["sizes"][s][name]["fpir"] for s in sizes]
        line = left.plot(sizes, fpir, "o-", label=f"{name} (measured)")[0]
        left.plot(sizes, [results["sizes"][s][name]["predicted_fpir"] for s in sizes], "--",
                  color=line.get_color(), label=f"{name} (curve)")
        right.plot(sizes, [results["sizes"][s][name]["fnir"] for s in sizes], "o-", color=line.get_color(), label=name)
    for r in rates:
        left.axhline(r, color="grey", lw=0.6, ls=":")
    left.set(xscale="log", yscale="log", xlabel="enrolled people", ylabel="strangers matched to someone (FPIR)",
             title="celeba_ir, open-set 1:N")
    right.set(xscale="log", xlabel="enrolled people", ylabel="enrolled photos not identified (FNIR)",
              title="the price: people turned away")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    return fig


if __name__ == "__main__":
    raise SystemExit(main())
