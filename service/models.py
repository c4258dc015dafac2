"""The models one process holds: ``MODEL_PATH``, and during an upgrade ``NEXT_MODEL_PATH`` too.

A process that holds both embeds every enrolled face with both (the gallery of the new model
grows with the old one's), and a server answers with whichever of them Redis says is serving
and complete (:mod:`service.versions`), so the switch needs no restart and leaves no gap.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from recognizer import Recognizer

from .config import ServiceConfig


class ModelSet:
    """Recognizers by model version, the primary (``MODEL_PATH``) first."""

    def __init__(self, primary: Recognizer, *others: Recognizer) -> None:
        self.primary = primary
        self.by_version: dict[str, Recognizer] = {primary.version: primary}
        for other in others:
            self.by_version.setdefault(other.version, other)

    @property
    def versions(self) -> list[str]:
        return list(self.by_version)

    def __getitem__(self, version: str) -> Recognizer:
        return self.by_version[version]

    def __contains__(self, version: object) -> bool:
        return version in self.by_version

    def __iter__(self) -> Iterator[Recognizer]:
        return iter(self.by_version.values())

    def __len__(self) -> int:
        return len(self.by_version)

    def embed_frames(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Canonical face frames (N x 218 x 178 x 3) embedded by every model: {version: (N, dim)}."""
        return {r.version: r.embed(r.frames_to_input(frames)) for r in self}


def load_recognizer(path: Path, config: ServiceConfig) -> Recognizer:
    """One model with the service's limits. Sets torch's thread count first: several
    processes each using every core thrash (measured 10-30x slower on 2 busy cores)."""
    torch.set_num_threads(config.torch_threads)
    return Recognizer(
        path,
        threads=config.torch_threads,
        min_face_size=config.min_face_size,
        detect_max_side=config.detect_max_side,
        min_probability=config.min_detection_probability,
        backend=config.inference_backend,
        max_image_bytes=config.max_image_bytes,
        max_image_pixels=config.max_image_pixels,
    )


def build_models(config: ServiceConfig, primary: Recognizer | None = None) -> ModelSet:
    """``MODEL_PATH`` (or ``primary``, already loaded) plus ``NEXT_MODEL_PATH`` when set."""
    primary = primary or load_recognizer(config.resolved_model_path(), config)
    next_path = config.resolved_next_model_path()
    return ModelSet(primary, *([load_recognizer(next_path, config)] if next_path else []))
