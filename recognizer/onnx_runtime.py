"""Networks under ONNX Runtime: the same weights, exported once per model version.

Why: on this CPU ONNX Runtime runs InceptionResnetV1 faster than eager PyTorch (most for one
face), and MTCNN's R-Net and O-Net 1.6x and 2.5x faster (P-Net, one large convolution over each
pyramid scale, is not faster and stays in PyTorch); see docs/BENCHMARKS.md. Outputs equal
fp32 PyTorch's to 1e-6. The export
(``torch.onnx.export``) takes seconds, so the graph is cached per model version and torch
version under ``$FACEREC_CACHE`` (default ``~/.cache/facerec``), written atomically, and every
later process of the host loads it from there.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write_bytes

if TYPE_CHECKING:
    from .int8 import Int8Quantization


def cache_dir() -> Path:
    """Where exported graphs are kept (never in the repository)."""
    return Path(os.environ.get("FACEREC_CACHE") or Path.home() / ".cache" / "facerec")


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """The network as an ONNX graph with a dynamic batch dimension (NCHW float32 input)."""
    buf = io.BytesIO()
    outputs = model(example)
    names = [f"y{i}" for i in range(len(outputs))] if isinstance(outputs, (tuple, list)) else ["y0"]
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(model.float().eval(), example, buf, input_names=["x"], output_names=names,
                          dynamic_axes={"x": {0: "n"}, **{name: {0: "n"} for name in names}},
                          opset_version=17, dynamo=False)
    return buf.getvalue()


class OnnxNetwork:
    """An ONNX Runtime session for one network, its graph cached under ``key``.

    ``key`` must change whenever the weights do (the model version, the package that ships
    them); the torch version is added because it made the graph.
    """

    def __init__(self, model: nn.Module, key: str, example: torch.Tensor, threads: int,
                 int8: "Int8Quantization | None" = None) -> None:
        """``int8``: run the int8 graph made from these kept parameters instead (:mod:`recognizer.int8`)."""
        import onnxruntime as ort

        path = cache_dir() / f"{key}-torch{torch.__version__.split('+')[0]}.onnx"
        if path.is_file():
            graph = path.read_bytes()
        else:
            with torch.inference_mode():
                graph = export_onnx(model, example)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, graph)
        if int8 is not None:
            from .int8 import build_int8_graph, library_versions

            versions = library_versions()
            fp32_path, path = path, path.with_name(f"{key}-int8-{int8.fingerprint()}-torch{versions['torch']}-"
                                                   f"ort{versions['onnxruntime']}.onnx")
            if path.is_file():
                graph = path.read_bytes()
            else:
                graph = build_int8_graph(fp32_path, int8, tuple(example.shape[1:]))
                atomic_write_bytes(path, graph)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.path = path

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of the network for an NCHW float32 batch."""
        return self.session.run(None, {"x": np.ascontiguousarray(batch, dtype=np.float32)})


class OnnxStage:
    """An MTCNN stage (R-Net or O-Net) under ONNX Runtime, called like the torch module it
    replaces: a tensor in, a tuple of tensors out (what facenet-pytorch's ``detect_face`` expects)."""

    def __init__(self, network: OnnxNetwork) -> None:
        self.network = network

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(out) for out in self.network(batch.numpy()))
