"""The model artifact: one file holding the network weights and everything needed to use them.

A dict saved with ``torch.save`` and read back with ``weights_only=True`` (no pickled code):
``format``, ``format_version``, ``metadata`` (architecture, embedding size, alignment recipe,
calibrated threshold, training summary, version) and ``state_dict``. The version is a hash of
the weights and metadata, so two galleries can tell whether they were made by the same model,
and a damaged file is caught when it is loaded.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import atomic_write
from .errors import ModelArtifactError
from .preprocess import AlignmentRecipe

FORMAT = "facerec-model"
FORMAT_VERSION = 1
ARCHITECTURE = "InceptionResnetV1"


HOW_TO_MAKE_A_MODEL = (
    "Train one with `python -m trainer fit --data ../shared/data/celeba1k --config cpu --out runs/cpu` "
    "(about 100 minutes on 2 cores; `--config tiny` makes a useless but working model in seconds for a "
    "smoke test), or point MODEL_PATH / --model at an existing model.pt."
)


def newest_model(runs_dir: Path) -> Path | None:
    """The most recently written ``runs/*/model.pt`` (training rewrites it atomically each epoch)."""
    candidates = [p for p in Path(runs_dir).glob("*/model.pt") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def content_hash(metadata: dict, state_dict: dict[str, torch.Tensor]) -> str:
    """Short sha256 over the weights and the metadata (minus ``version`` itself)."""
    digest = hashlib.sha256()
    meta = {k: v for k, v in metadata.items() if k != "version"}
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


@dataclass
class ModelArtifact:
    """Weights plus metadata; ``version`` is filled in by :meth:`save`/:meth:`load`."""

    state_dict: dict[str, torch.Tensor]
    recipe: AlignmentRecipe
    threshold: float
    embedding_size: int = 512
    architecture: str = ARCHITECTURE
    flip_average: bool = True
    training: dict = field(default_factory=dict)
    version: str = ""

    def metadata(self) -> dict:
        return {
            "architecture": self.architecture,
            "embedding_size": self.embedding_size,
            "alignment": self.recipe.to_dict(),
            "threshold": float(self.threshold),
            "flip_average": bool(self.flip_average),
            "training": copy.deepcopy(self.training),
            "version": self.version,
        }

    def save(self, path: str | os.PathLike) -> str:
        """Write atomically (temp file + rename); returns the version id."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.state_dict.items()}
        meta = self.metadata()
        self.version = meta["version"] = content_hash(meta, state)
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "metadata": meta, "state_dict": state}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
        return self.version

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelArtifact":
        """Read and verify a model file; any problem is a :class:`ModelArtifactError`."""
        path = Path(path)
        if not path.is_file():
            raise ModelArtifactError(f"model file not found: {path}. {HOW_TO_MAKE_A_MODEL}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelArtifactError(f"{path} is not a readable model file (corrupt or truncated): {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ModelArtifactError(f"{path} is not a {FORMAT} artifact (a foreign or raw checkpoint?)")
        if payload.get("format_version") != FORMAT_VERSION:
            raise ModelArtifactError(
                f"{path} has artifact format version {payload.get('format_version')}, "
                f"this code reads version {FORMAT_VERSION}"
            )
        try:
            meta, state = payload["metadata"], payload["state_dict"]
            artifact = cls(
                state_dict=state,
                recipe=AlignmentRecipe.from_dict(meta["alignment"]),
                threshold=float(meta["threshold"]),
                embedding_size=int(meta["embedding_size"]),
                architecture=str(meta["architecture"]),
                flip_average=bool(meta.get("flip_average", True)),
                training=dict(meta.get("training", {})),
                version=str(meta["version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelArtifactError(f"{path} has incomplete metadata: {exc}") from exc
        if artifact.architecture != ARCHITECTURE:
            raise ModelArtifactError(f"{path} holds a {artifact.architecture}; only {ARCHITECTURE} is supported")
        actual = content_hash(meta, state)
        if actual != artifact.version:
            raise ModelArtifactError(
                f"{path} is damaged: its content hash is {actual} but it claims version {artifact.version}"
            )
        return artifact
