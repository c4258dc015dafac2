"""The embedding network: InceptionResnetV1 from a model artifact, inference only."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._torchvision_shim import import_facenet_pytorch
from .artifact import ModelArtifact, content_hash
from .errors import ModelArtifactError
from .int8 import Int8Quantization
from .preprocess import AlignmentRecipe, to_tensor


def build_backbone(dropout_prob: float = 0.6) -> nn.Module:
    """An untrained InceptionResnetV1 that outputs L2-normalised 512-d embeddings."""
    facenet_pytorch = import_facenet_pytorch()
    return facenet_pytorch.InceptionResnetV1(pretrained=None, classify=False, dropout_prob=dropout_prob)


def embed_tensor(model: nn.Module, batch: torch.Tensor, flip_average: bool) -> torch.Tensor:
    """Embeddings of a normalised NCHW batch; with ``flip_average`` the embedding of the image
    and of its mirror are summed before normalising (a cheap, reliable accuracy gain)."""
    out = model(batch)
    if flip_average:
        out = out + model(torch.flip(batch, dims=[3]))
    return torch.nn.functional.normalize(out.float(), dim=1)


BACKENDS = ("torch", "onnx", "onnx-int8")


class Embedder:
    """Loads the network once; ``embed`` maps input-size face crops to unit vectors."""

    def __init__(self, artifact: ModelArtifact, device: str = "cpu", batch_size: int = 64,
                 flip_average: bool | None = None, backend: str = "torch",
                 int8: Int8Quantization | None = None) -> None:
        """``backend``: ``"torch"`` (eager PyTorch), ``"onnx"`` (the same weights under ONNX
        Runtime on the CPU, see :mod:`recognizer.onnx_runtime`) or ``"onnx-int8"`` (its int8
        graph, made from ``int8``, the model's kept parameters: :mod:`recognizer.int8`)."""
        if backend not in BACKENDS:
            raise ValueError(f"embedding backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "onnx-int8" and int8 is None:
            raise ModelArtifactError("the onnx-int8 backend needs the model's int8 parameters (<model>.int8.json); "
                                     "make them with `python -m trainer calibrate-int8`")
        if int8 is not None and artifact.version and int8.model_version != artifact.version:
            raise ModelArtifactError(f"int8 parameters for model {int8.model_version}, not {artifact.version}")
        self.recipe: AlignmentRecipe = artifact.recipe
        self.dim = artifact.embedding_size
        self.batch_size = batch_size
        self.flip_average = artifact.flip_average if flip_average is None else flip_average
        self.device = torch.device(device)
        model = build_backbone()
        try:
            model.load_state_dict(artifact.state_dict)
        except RuntimeError as exc:
            raise ModelArtifactError(f"the artifact's weights do not fit {artifact.architecture}: {exc}") from exc
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        self.backend = backend
        self._onnx = None
        if backend in ("onnx", "onnx-int8"):
            from .onnx_runtime import OnnxNetwork

            example = torch.zeros(2, 3, *self.recipe.input_size)
            # the graph cache is keyed by version; a model not yet saved has none, so hash its weights
            # (an empty key would hand every unsaved model the first one's graph)
            version = artifact.version or content_hash(artifact.metadata(), artifact.state_dict)
            self._onnx = OnnxNetwork(self.model, f"embedder-{version}", example, torch.get_num_threads(),
                                     int8 if backend == "onnx-int8" else None)

    @torch.inference_mode()
    def embed(self, crops: np.ndarray) -> np.ndarray:
        """NxHxWx3 uint8 crops at the recipe's input size -> (N, dim) float32, unit norm."""
        if len(crops) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        outputs = []
        for start in range(0, len(crops), self.batch_size):
            batch = to_tensor(crops[start:start + self.batch_size], self.recipe).to(self.device)
            if self._onnx is not None:
                outputs.append(torch.from_numpy(self._embed_onnx(batch.numpy())))
                continue
            batch = batch.contiguous(memory_format=torch.channels_last)
            outputs.append(embed_tensor(self.model, batch, self.flip_average).cpu())
        return torch.cat(outputs).numpy().astype(np.float32)

    def _embed_onnx(self, batch: np.ndarray) -> np.ndarray:
        """One ONNX Runtime call for the batch and (with flip averaging) its mirror."""
        n = len(batch)
        if self.flip_average:
            batch = np.concatenate([batch, batch[:, :, :, ::-1]])
        out = self._onnx(batch)[0]
        if self.flip_average:
            out = out[:n] + out[n:]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
