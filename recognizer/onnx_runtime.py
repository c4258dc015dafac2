"""The embedding network under ONNX Runtime: the same weights, exported once per model version.

Why: on this CPU ONNX Runtime runs InceptionResnetV1 about 2x faster than eager PyTorch for
one face (docs/BENCHMARKS.md), with embeddings equal to fp32 PyTorch's to 1e-6. The export
(``torch.onnx.export``) takes seconds, so the graph is cached per model version and torch
version under ``$FACEREC_CACHE`` (default ``~/.cache/facerec``), written atomically, and every
later process of the host loads it from there.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write_bytes


def cache_dir() -> Path:
    """Where exported graphs are kept (never in the repository)."""
    return Path(os.environ.get("FACEREC_CACHE") or Path.home() / ".cache" / "facerec")


def export_onnx(model: nn.Module, input_size: tuple[int, int]) -> bytes:
    """The network as an ONNX graph with a dynamic batch dimension (NCHW float32 input)."""
    height, width = input_size
    dummy = torch.zeros(2, 3, height, width)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(model.float().eval(), dummy, buf, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    return buf.getvalue()


class OnnxNetwork:
    """An ONNX Runtime session for one model version; ``__call__`` maps NCHW float32 to outputs."""

    def __init__(self, model: nn.Module, version: str, input_size: tuple[int, int], threads: int) -> None:
        import onnxruntime as ort

        path = cache_dir() / f"embedder-{version}-torch{torch.__version__.split('+')[0]}.onnx"
        if path.is_file():
            graph = path.read_bytes()
        else:
            graph = export_onnx(model, input_size)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, graph)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.path = path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": np.ascontiguousarray(batch, dtype=np.float32)})[0]
