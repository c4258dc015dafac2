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
from typing import Mapping

import torch

from .atomic import atomic_write
from .errors import ModelArtifactError
from .preprocess import AlignmentRecipe

FORMAT = "facerec-model"
FORMAT_VERSION = 1
ARCHITECTURE = "InceptionResnetV1"


# The release model, trained by our trainer and kept in the repository (models/README.md is its
# card): a fresh clone recognises people with no training run.
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "facerec.pt"

HOW_TO_MAKE_A_MODEL = (
    f"The release model ships as {SHIPPED_MODEL.relative_to(SHIPPED_MODEL.parent.parent)}; to use a model of "
    "your own, train it (`python -m trainer fit ... --out runs/NAME`, see models/README.md) and set "
    "MODEL_PATH=runs/NAME/model.pt (CLI: --model)."
)


def default_model_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``MODEL_PATH`` when set, else the shipped release model. A run in ``runs/`` is never
    picked up silently: a half-trained epoch there would change every answer without a word."""
    return Path(environ["MODEL_PATH"]) if environ.get("MODEL_PATH") else SHIPPED_MODEL


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
