"""dlib's face recognition ResNet, read from its own ``.dat`` file into a PyTorch module.

dlib runs the teacher at about 7 faces/s a core and cannot batch. The same network in PyTorch,
batched and with oneDNN, runs an order of magnitude faster on the same core, which turns the
teacher cache from most of an hour into minutes and makes a teacher that sees the student's own
augmented view affordable. The weights are read from the public-domain (CC0) file that
``face-recognition-models`` installs, at run time; nothing of dlib's is copied into the project.

The file is dlib's serialisation of ``anet_type`` in dlib's ``tools/python/src/face_recognition.cpp``:
29 convolutions with per-channel affine layers (batch norm folded), ReLUs, a max pool, residual
additions whose downsampling skips are 2x2 average pools, a global average pool and a 128-d fully
connected layer. dlib writes each layer's details from the input outwards, so reading the known
layer records in file order gives the forward order. Two dlib rules matter for equivalence and are
reproduced here: a stride-2 convolution or pool has no padding (a stride-1 one pads by half the
window), and a residual addition of tensors of different shapes zero-pads both to the larger
shape (channels and rows/columns alike). ``tests/test_dlib_net.py`` checks the module against
dlib's own descriptor.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHIP_SIZE = 150
CHIP_PADDING = 0.25  # dlib's compute_face_descriptor default


class DlibFormatError(ValueError):
    """The file is not the dlib ResNet this module knows how to read."""


class _Reader:
    """dlib's serialisation primitives: a byte of size (low nibble) and sign (0x80), then that many
    little-endian bytes for an integer; a length-prefixed string; a mantissa/exponent pair for a
    float; tensors as four 64-bit dimensions and raw little-endian float32 data."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def int(self) -> int:
        head = self.data[self.pos]
        size = head & 0x0F
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if head & 0x80 else value

    def string(self) -> str:
        size = self.int()
        text = self.data[self.pos:self.pos + size].decode("ascii")
        self.pos += size
        return text

    def float(self) -> float:
        mantissa = self.int()
        exponent = self.int()
        return float(mantissa) * 2.0 ** exponent

    def shape(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version not in (1, 2):
            raise DlibFormatError(f"tensor record version {version} at byte {self.pos}")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]

    def tensor(self) -> np.ndarray:
        shape = self.shape()
        count = int(np.prod(shape))
        values = np.frombuffer(self.data, "<f4", count, self.pos).reshape(shape)
        self.pos += 4 * count
        return values.astype(np.float32)


@dataclass
class _Layer:
    kind: str
    params: dict = field(default_factory=dict)


_KINDS = ("con_4", "con_5", "con_6", "affine_", "affine_2", "relu_", "relu_2", "max_pool_2", "avg_pool_2",
          "add_prev_", "fc_2", "fc_3", "input_rgb_image_sized")


_RECORD = re.compile(b"\\x01(?:" + b"|".join(re.escape(bytes([len(k)]) + k.encode()) for k in _KINDS) + b")")


def _next_record(reader: _Reader) -> str | None:
    """Move to the next layer record dlib wrote (its version string) and consume the string."""
    found = _RECORD.search(reader.data, reader.pos)
    if found is None:
        return None
    reader.pos = found.end()
    return found.group(0)[2:].decode()


def read_layers(path: str | os.PathLike) -> tuple[list[_Layer], tuple[float, float, float]]:
    """The layers of dlib's ResNet in forward order, and the input layer's mean pixel (R, G, B)."""
    with open(path, "rb") as fh:
        reader = _Reader(fh.read())
    layers: list[_Layer] = []
    mean = (122.782, 117.001, 104.298)
    while (kind := _next_record(reader)) is not None:
        if kind == "input_rgb_image_sized":
            mean = (reader.float(), reader.float(), reader.float())
        elif kind.startswith("con_"):
            params = reader.tensor().reshape(-1)
            filters, rows, cols = reader.int(), reader.int(), reader.int()
            stride = (reader.int(), reader.int())
            padding = (reader.int(), reader.int())
            fshape, bshape = reader.shape(), reader.shape()
            n = int(np.prod(fshape))
            layers.append(_Layer("conv", {"weight": params[:n].reshape(fshape),
                                          "bias": params[n:n + int(np.prod(bshape))],
                                          "stride": stride, "padding": padding}))
            if fshape[0] != filters or fshape[2:] != (rows, cols):
                raise DlibFormatError(f"convolution filters {fshape} against {filters}x{rows}x{cols}")
        elif kind.startswith("affine_"):
            params = reader.tensor().reshape(-1)
            half = params.size // 2
            layers.append(_Layer("affine", {"gamma": params[:half], "beta": params[half:]}))
        elif kind.startswith("relu_"):
            layers.append(_Layer("relu"))
        elif kind in ("max_pool_2", "avg_pool_2"):
            rows, cols, sy, sx, py, px = (reader.int() for _ in range(6))
            layers.append(_Layer(kind[:-2], {"window": (rows, cols), "stride": (sy, sx), "padding": (py, px)}))
        elif kind == "add_prev_":
            layers.append(_Layer("add"))
        elif kind.startswith("fc_"):
            outputs, inputs = reader.int(), reader.int()
            params = reader.tensor().reshape(-1)
            layers.append(_Layer("fc", {"weight": params[:outputs * inputs].reshape(inputs, outputs).T.copy()}))
    return layers, mean


def _pad_to(x: torch.Tensor, channels: int, rows: int, cols: int) -> torch.Tensor:
    return F.pad(x, (0, cols - x.shape[3], 0, rows - x.shape[2], 0, channels - x.shape[1]))


def _dlib_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: both tensors zero-padded to the larger size in every dimension."""
    if a.shape == b.shape:
        return a + b
    c, r, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))
    return _pad_to(a, c, r, w) + _pad_to(b, c, r, w)


class _Unit(nn.Module):
    """One residual unit: conv-affine-relu-conv-affine, plus the input (2x2-average-pooled when the
    first conv has stride 2), then ReLU."""

    def __init__(self, convs: list[_Layer], affines: list[_Layer], skip_pool: _Layer | None) -> None:
        super().__init__()
        self.conv1, self.conv2 = (self._conv(c, a) for c, a in zip(convs, affines))
        self.skip_pool = skip_pool.params if skip_pool else None

    @staticmethod
    def _conv(conv: _Layer, affine: _Layer) -> nn.Conv2d:
        """The convolution with its affine layer folded in: gamma * (Wx + b) + beta."""
        weight = torch.from_numpy(conv.params["weight"])
        out = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]),
                        stride=conv.params["stride"], padding=conv.params["padding"])
        gamma = torch.from_numpy(affine.params["gamma"])
        beta = torch.from_numpy(affine.params["beta"])
        with torch.no_grad():
            out.weight.copy_(weight * gamma[:, None, None, None])
            out.bias.copy_(torch.from_numpy(conv.params["bias"]) * gamma + beta)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        if self.skip_pool is not None:
            x = F.avg_pool2d(x, self.skip_pool["window"], self.skip_pool["stride"], self.skip_pool["padding"])
        return F.relu(_dlib_add(y, x))


class DlibResNet(nn.Module):
    """dlib_face_recognition_resnet_model_v1 as a module: 150x150 RGB chips (0-255, NCHW float)
    in, dlib's raw 128-d descriptor out (not normalised, as dlib returns it)."""

    def __init__(self, layers: list[_Layer], mean: tuple[float, float, float]) -> None:
        super().__init__()
        kinds = [layer.kind for layer in layers]
        if len(kinds) < 8:
            raise DlibFormatError(f"{len(kinds)} layer records: not dlib's face recognition ResNet")
        global_pool = layers[-2].params.get("window") == (0, 0)  # avg_pool_everything
        if kinds[:4] != ["conv", "affine", "relu", "max_pool"] or kinds[-2:] != ["avg_pool", "fc"] or not global_pool:
            raise DlibFormatError(f"unexpected layer order {kinds[:4]} ... {kinds[-2:]}")
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.stem = _Unit._conv(layers[0], layers[1])
        self.stem_pool = layers[3].params
        units = []
        body = layers[4:-2]
        i = 0
        while i < len(body):
            # a unit is: conv affine relu conv affine [avg_pool] add relu
            convs = [body[i], body[i + 3]]
            affines = [body[i + 1], body[i + 4]]
            j = i + 5
            pool = None
            if body[j].kind == "avg_pool":
                pool = body[j]
                j += 1
            if [body[j].kind, body[j + 1].kind] != ["add", "relu"] or convs[0].kind != "conv":
                raise DlibFormatError(f"unexpected residual unit at layer {i + 4}: {kinds[i + 4:j + 6]}")
            units.append(_Unit(convs, affines, pool))
            i = j + 2
        self.units = nn.Sequential(*units)
        self.fc = nn.Linear(layers[-1].params["weight"].shape[1], layers[-1].params["weight"].shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(layers[-1].params["weight"]))

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = (chips - self.mean) / 256.0
        x = F.relu(self.stem(x))
        pool = self.stem_pool
        x = F.max_pool2d(x, pool["window"], pool["stride"], pool["padding"])
        x = self.units(x)
        return self.fc(x.mean((2, 3)))


def model_path() -> str:
    """Where ``face-recognition-models`` installed dlib's network file."""
    from .teacher import import_dlib

    (models,) = import_dlib("face_recognition_models")
    return models.face_recognition_model_location()


def load(path: str | os.PathLike | None = None) -> DlibResNet:
    """The network from dlib's file (the installed one by default), in eval mode."""
    layers, mean = read_layers(path or model_path())
    return DlibResNet(layers, mean).eval()


__all__ = ["CHIP_PADDING", "CHIP_SIZE", "DlibFormatError", "DlibResNet", "load", "model_path", "read_layers"]
