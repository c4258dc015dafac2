"""Data the benchmarks share: the model run's own train/held-out split, rebuilt from the
artifact's training config, and a synthetic CelebA-layout folder for machines without data.

Benchmarks must not evaluate a model on images it was trained on; ``runs/<run>/splits.json``
only stores counts, so the split is recomputed with the trainer's own functions and checked
against those counts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from recognizer.artifact import ModelArtifact
from trainer.data import Dataset, Splits, discover, make_splits


@dataclass
class ModelSplit:
    """The dataset as the trainer saw it, its split, and whether it matches ``splits.json``."""

    dataset: Dataset
    labels: np.ndarray
    splits: Splits
    counts: dict[str, int]
    expected: dict[str, int] = field(default_factory=dict)

    @property
    def mismatches(self) -> list[str]:
        return [f"{k}: rebuilt {self.counts[k]}, splits.json {v}" for k, v in self.expected.items()
                if k in self.counts and self.counts[k] != v]

    def describe(self) -> str:
        if not self.expected:
            return f"split rebuilt from the model's config ({self.counts}); no splits.json to check against"
        if self.mismatches:
            return "SPLIT MISMATCH vs splits.json: " + "; ".join(self.mismatches)
        return f"split rebuilt from the model's config matches splits.json ({self.counts})"


def model_split(artifact: ModelArtifact, celeba_dir: Path, splits_json: Path | None) -> ModelSplit:
    """Recompute the run's split with ``trainer.data.discover`` + ``make_splits`` and the
    config stored in the artifact (open_identities, val_per_identity, seed, limit_identities).

    The trainer drops images where no face was found before splitting; for the CelebA layout
    nothing is dropped (frames are cropped, not detected), which ``skipped_no_face`` confirms.
    """
    config = artifact.training.get("config")
    if not config:
        raise ValueError("the model artifact has no training config; cannot rebuild its split")
    dataset = discover(celeba_dir, config.get("limit_identities"))
    labels = dataset.labels
    splits = make_splits(labels, int(config["open_identities"]), int(config["val_per_identity"]),
                         int(config["seed"]))
    counts = {"images": len(dataset.paths), "train": len(splits.train), "closed_val": len(splits.closed_val),
              "open_set": len(splits.open_set)}
    expected: dict[str, int] = {}
    if splits_json is not None and splits_json.is_file():
        saved = json.loads(splits_json.read_text())
        expected = {k: int(saved[k]) for k in counts if k in saved}
        if saved.get("skipped_no_face"):
            expected["skipped_no_face(!=0: indices shifted)"] = int(saved["skipped_no_face"])
    return ModelSplit(dataset, labels, splits, counts, expected)


def make_synthetic_celeba(root: Path, identities: int, per_identity: int, seed: int = 0) -> Path:
    """Random 178x218 images in CelebA's layout: the trainer's input pipeline does the same
    work on them as on real faces, which is all a speed benchmark needs."""
    rng = np.random.default_rng(seed)
    images = root / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for ident in range(1, identities + 1):
        base = rng.integers(0, 256, (218, 178, 3))
        for _ in range(per_identity):
            name = f"{len(lines) + 1:06d}.jpg"
            noise = rng.normal(0, 20, base.shape)
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(images / name, quality=90)
            lines.append(f"{name} {ident}")
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    return root
