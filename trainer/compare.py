"""``python -m trainer compare``: is model A really better than model B, or lucky?

The release rule compares a candidate's val open TAR at FAR 1e-3 with the shipped model's. Both
are measured on 50 held-out identities, where one identity more or less moves TAR by several
points (:mod:`trainer.bootstrap`). Here both models embed the same images and the same identity
draws apply to both, so the difference gets its own interval, far narrower than either TAR's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recognizer import Recognizer

from . import bootstrap
from .data import model_split

SPLIT_KEYS = ("seed", "open_identities", "val_per_identity", "limit_identities")
VAL_FARS = (1e-2, 1e-3)
CELEBA_IR_FPRS = (0.05, 0.01, 0.001)


def same_split(a: Recognizer, b: Recognizer) -> dict:
    """The split config both models were trained with; ``ValueError`` when they differ (their held-out
    people would differ, and one model would be measured on people it was trained on)."""
    configs = [r.artifact.training.get("config") for r in (a, b)]
    if not all(configs):
        raise ValueError("a model carries no training config: its held-out people are unknown")
    for key in SPLIT_KEYS:
        if configs[0].get(key) != configs[1].get(key):
            raise ValueError(f"the models were split differently ({key}: {configs[0].get(key)!r} against "
                             f"{configs[1].get(key)!r}): no held-out set is unseen by both")
    return configs[0]


def compare_models(a_path: Path, b_path: Path, celeba1k: Path, rounds: int = 1000,
                   cache_dir: str | None = ".cache", celeba_ir: Path | None = None, seed: int = 0) -> dict:
    """Paired identity bootstrap of A against B: val open TAR at FAR 1e-2 and 1e-3 and, with
    ``celeba_ir`` (look only after a choice: it is the test set), its TPRs."""
    a, b = Recognizer(a_path), Recognizer(b_path)
    config = same_split(a, b)
    crops, labels, splits = model_split(config, celeba1k, a.recipe, cache_dir)
    probes, probe_labels = crops[splits.open_set], labels[splits.open_set]
    table = bootstrap.pair_table(probe_labels)
    scores = [bootstrap.pair_scores_all(r.embed(probes)) for r in (a, b)]
    report = {"a": a.version, "b": b.version, "rounds": rounds,
              "val_open": {"identities": table.identities, "images": int(len(probes)),
                           **{f"tar@far={far:g}": bootstrap.compare_tar(table, *scores, far, rounds, seed)
                              for far in VAL_FARS}}}
    if celeba_ir is not None:
        report["celeba_ir"] = celeba_ir_comparison(a, b, celeba_ir, rounds, seed)
    return report


def celeba_ir_comparison(a: Recognizer, b: Recognizer, root: Path, rounds: int, seed: int) -> dict:
    """The same on celeba_ir: query identities are resampled, distractors always count once."""
    from recognizer.images import load_image

    from .release import celeba_ir_images, celeba_ir_scores, embed_arrays

    q_paths, ids, d_paths = celeba_ir_images(root)
    images = [load_image(p) for p in q_paths]
    scores = []
    for rec in (a, b):
        pos, neg = celeba_ir_scores(embed_arrays(rec, images), ids, rec.embed_images(d_paths, "crop"))
        scores.append(np.concatenate([pos, neg]))
    table = bootstrap.query_distractor_table(ids, len(d_paths))
    return {"identities": table.identities, "queries": len(q_paths), "distractors": len(d_paths),
            **{f"tpr@fpr={f:g}": bootstrap.compare_tar(table, *scores, f, rounds, seed) for f in CELEBA_IR_FPRS}}


def format_comparison(report: dict) -> str:
    """A markdown table: each model's figure (all identities once) with its 90% interval, the
    difference likewise, and how often A came out ahead."""
    lines = [f"A = {report['a']}, B = {report['b']}; {report['rounds']} identity resamplings, 90% intervals",
             "", "| figure | A | B | A - B | A ahead |", "|---|---|---|---|---|"]
    for section in ("val_open", "celeba_ir"):
        for key, row in report.get(section, {}).items():
            if not isinstance(row, dict):
                continue
            cells = [f"{row[m]['point']:.3f} ({row[m]['ci90'][0]:.3f}-{row[m]['ci90'][1]:.3f})" for m in ("a", "b")]
            d = row["a_minus_b"]
            lines.append(f"| {section} {key} | {cells[0]} | {cells[1]} | {d['point']:+.3f} "
                         f"({d['ci90'][0]:+.3f} to {d['ci90'][1]:+.3f}) | {row['a_ahead']:.0%} |")
    return "\n".join(lines)
