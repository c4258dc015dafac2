"""The two torchvision functions facenet-pytorch needs, for installs without torchvision.

facenet-pytorch imports torchvision at load time but only calls ``ops.boxes.batched_nms``
(MTCNN) and ``transforms.functional.to_tensor``. PyPI's torchvision does not load beside the
CPU torch wheel we pin, and the pairing that does is a 5.5 GB CUDA install, so when torchvision
is absent we put these two functions under its name just long enough to import facenet-pytorch.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import torch


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; returns kept indices sorted by decreasing score.

    The loop runs in NumPy: MTCNN calls this ~9 times per image on a few hundred boxes, and a
    dozen tiny torch ops per kept box cost more there than the detector's convolutions."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    b = boxes.detach().cpu().numpy()
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = torch.argsort(scores, descending=True).cpu().numpy()
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 (two empty boxes) is NaN: dropped
            iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return torch.as_tensor(np.asarray(keep, dtype=np.int64), device=boxes.device)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS done independently per category ``idxs`` (boxes offset so groups never overlap)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def to_tensor(pic) -> torch.Tensor:
    """PIL image or HxWxC uint8 array -> CxHxW float tensor in [0, 1]."""
    arr = np.asarray(pic)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor.float()


def import_facenet_pytorch() -> types.ModuleType:
    """Import facenet_pytorch, lending it these functions only if torchvision is missing."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or the known "operator torchvision::nms does not exist"
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        fake = {
            "torchvision": types.ModuleType("torchvision"),
            "torchvision.ops": types.ModuleType("torchvision.ops"),
            "torchvision.ops.boxes": types.ModuleType("torchvision.ops.boxes"),
            "torchvision.transforms": types.ModuleType("torchvision.transforms"),
            "torchvision.transforms.functional": types.ModuleType("torchvision.transforms.functional"),
        }
        fake["torchvision.ops.boxes"].batched_nms = batched_nms
        fake["torchvision.ops.boxes"].nms = nms
        fake["torchvision.transforms.functional"].to_tensor = to_tensor
        fake["torchvision"].ops = fake["torchvision.ops"]
        fake["torchvision"].transforms = fake["torchvision.transforms"]
        fake["torchvision.ops"].boxes = fake["torchvision.ops.boxes"]
        fake["torchvision.transforms"].functional = fake["torchvision.transforms.functional"]
        sys.modules.update(fake)
        try:
            import facenet_pytorch
        finally:
            for name in fake:  # facenet_pytorch holds its own references now
                sys.modules.pop(name, None)
        return facenet_pytorch
    import facenet_pytorch

    return facenet_pytorch
