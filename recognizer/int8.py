"""The embedding network in int8 under ONNX Runtime, from quantization parameters kept beside the model.

Why: on 2 CPU cores the network is most of identify once detection is cut down, and ONNX
Runtime's static int8 graph (QDQ, per-channel weights) runs it about 1.9x faster than its fp32
graph, with embeddings at cosine >= 0.998 to fp32's (docs/BENCHMARKS.md). Static quantization
needs each activation's range, measured on real faces, and a server has no faces to measure on.
So the ranges are measured once per model (``python -m trainer calibrate-int8``), and what ONNX
Runtime made of them, one (scale, zero point) per activation tensor, is kept in a small file
beside the model (``<model stem>.int8.json``), like the score-norm calibration and the stranger
curve. The weights and version stay as they are.

A server rebuilds the int8 graph from the file: ONNX Runtime's own quantizer with every
activation's parameters given (``TensorQuantOverrides``), so the graph is byte for byte the one
calibration made (a test checks it). The graph is cached under ``$FACEREC_CACHE``, keyed by the
model version, the parameters and the library versions. A file made for another graph (another
torch or onnxruntime version can name tensors differently) is refused with the command that
remakes it, never half-used.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import ModelArtifactError
from .sidecar import find_sidecar, read_sidecar, sidecar_path, write_sidecar

FORMAT = "face-int8-quantization"
KIND = "int8"
REMAKE = "remake it with `python -m trainer calibrate-int8 --model <model> --celeba1k <dir>`"


def quantization_path(model_path: str | os.PathLike[str]) -> Path:
    """Where a model's int8 parameters live: ``<model stem>.int8.json`` beside it."""
    return sidecar_path(model_path, KIND)


def library_versions() -> dict[str, str]:
    """The versions that decide the graph's tensor names and the quantizer's output."""
    import onnxruntime
    import torch

    return {"torch": torch.__version__.split("+")[0], "onnxruntime": onnxruntime.__version__}


def _quantize(fp32_graph: Path, out: Path, batches: Iterable[np.ndarray],
              overrides: dict[str, tuple[float, int]] | None = None) -> None:
    """ONNX Runtime's static QDQ quantization, with the product's one set of options: per-channel
    int8 weights in 7 bits (``reduce_range``: no u8s8 overflow on CPUs without VNNI), uint8
    activations, :func:`kept_in_fp32` left alone, min/max ranges from ``batches`` unless
    ``overrides`` gives every (scale, zero point)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.rest = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self.rest, None)
            return None if batch is None else {"x": np.ascontiguousarray(batch, np.float32)}

    extra = {}
    if overrides is not None:
        extra["TensorQuantOverrides"] = {name: [{"scale": np.array(scale, np.float32),
                                                 "zero_point": np.array(zero, np.uint8)}]
                                         for name, (scale, zero) in overrides.items()}
    with tempfile.TemporaryDirectory(prefix="facerec-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_graph), str(pre))
        quantize_static(str(pre), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=kept_in_fp32(pre), extra_options=extra)


def kept_in_fp32(graph_path: Path) -> list[str]:
    """The nodes left in fp32: the first convolution and the final dense layer. The normalised
    pixels, ``(p - 127.5) / 128``, fall half-way between uint8 levels, so a quantized input moves
    every pixel by half a step; the dense layer writes the embedding itself. Both are a sliver of
    the work. On the shipped model the held-out faces' worst cosine to fp32 went from 0.9948 (all
    quantized) to 0.9954, at the same speed (docs/BENCHMARKS.md)."""
    import onnx

    graph = onnx.load(str(graph_path)).graph
    first = [n.name for n in graph.node if n.op_type == "Conv" and graph.input[0].name in n.input][:1]
    return first + [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")]


def activation_parameters(int8_graph: Path) -> dict[str, tuple[float, int]]:
    """(scale, zero point) of every activation a QDQ graph quantizes (weights excluded)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(int8_graph)).graph
    constants = {init.name: init for init in graph.initializer}
    out: dict[str, tuple[float, int]] = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants:
            scale = numpy_helper.to_array(constants[node.input[1]])
            zero = numpy_helper.to_array(constants[node.input[2]])
            out[node.input[0]] = (float(scale), int(zero))
    return out


@dataclass(frozen=True)
class Int8Quantization:
    """One model's int8 activation parameters (a file beside the model)."""

    model_version: str
    activations: dict[str, tuple[float, int]]  # tensor name -> (scale, zero point)
    versions: dict[str, str]  # library_versions() when calibrated
    images: int  # face crops (and their mirrors) the ranges were measured on
    source: str
    checks: dict = field(default_factory=dict)  # what calibrate-int8 measured against fp32

    def __post_init__(self) -> None:
        if not self.activations:
            raise ValueError("no activation parameters")
        for name, (scale, zero) in self.activations.items():
            if not (np.isfinite(scale) and scale > 0 and 0 <= zero <= 255):
                raise ValueError(f"{name}: scale {scale} and zero point {zero} are not a uint8 quantization")

    def fingerprint(self) -> str:
        """Short hash of the parameters and versions: the int8 graph's cache key."""
        body = json.dumps([sorted(self.activations.items()), sorted(self.versions.items())])
        return hashlib.sha256(body.encode()).hexdigest()[:12]

    def save(self, path: str | os.PathLike[str]) -> None:
        fields = {"model_version": self.model_version, "versions": self.versions, "images": self.images,
                  "source": self.source, "checks": self.checks,
                  "activations": {name: [scale, zero] for name, (scale, zero) in sorted(self.activations.items())}}
        write_sidecar(path, FORMAT, fields)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Int8Quantization":
        """Read a parameters file; ModelArtifactError naming what is wrong with it."""
        body = read_sidecar(path, FORMAT, "int8 quantization file")
        try:
            return cls(str(body["model_version"]),
                       {str(k): (float(v[0]), int(v[1])) for k, v in dict(body["activations"]).items()},
                       {str(k): str(v) for k, v in dict(body["versions"]).items()}, int(body["images"]),
                       str(body["source"]), dict(body.get("checks") or {}))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelArtifactError(f"{path}: missing or bad field: {exc}") from None


def calibrate(fp32_graph: Path, batches: Iterable[np.ndarray], keep: Path | None = None) -> dict[str, tuple[float, int]]:
    """Quantize the graph with min/max ranges measured on ``batches`` (NCHW float32, normalised
    as the embedder feeds them) and return the activation parameters ONNX Runtime chose
    (``keep``: also write the int8 graph there)."""
    with tempfile.TemporaryDirectory(prefix="facerec-int8-") as tmp:
        out = keep or Path(tmp) / "int8.onnx"
        _quantize(fp32_graph, out, batches)
        return activation_parameters(out)


def build_int8_graph(fp32_graph: Path, quantization: Int8Quantization, input_shape: tuple[int, ...]) -> bytes:
    """The int8 graph made from the kept parameters alone. Raises ModelArtifactError when they do
    not fit this graph: a tensor without parameters would be quantized from a blank input."""
    with tempfile.TemporaryDirectory(prefix="facerec-int8-") as tmp:
        out = Path(tmp) / "int8.onnx"
        _quantize(fp32_graph, out, [np.zeros((1, *input_shape), np.float32)], quantization.activations)
        made = activation_parameters(out)
        missing = sorted(set(made) - set(quantization.activations))
        unused = sorted(set(quantization.activations) - set(made))
        changed = [name for name in set(made) & set(quantization.activations)
                   if made[name] != quantization.activations[name]]
        if missing or unused or changed:
            raise ModelArtifactError(
                f"the int8 parameters do not fit this graph: {len(missing)} of its activations have none "
                f"(e.g. {missing[:2]}), {len(unused)} of the file's are not in it and {len(changed)} came out "
                f"otherwise (calibrated with {quantization.versions}, here {library_versions()}); {REMAKE}")
        return out.read_bytes()


def find_quantization(model_path: str | os.PathLike[str], model_version: str) -> Int8Quantization | None:
    """The parameters beside a model, if there are any and they are this model's; a log line says
    why a file there is not used."""
    return find_sidecar(model_path, KIND, model_version, Int8Quantization.load, "int8 parameters not used")
