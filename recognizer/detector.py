"""Face detection with facenet-pytorch's MTCNN (its weights ship inside the pip package)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ._torchvision_shim import import_facenet_pytorch


@dataclass(frozen=True)
class DetectedFace:
    """One face: box (x0, y0, x1, y1) in image pixels, detector probability, 5 landmarks
    (left eye, right eye, nose, mouth left, mouth right) as (x, y)."""

    box: tuple[float, float, float, float]
    probability: float
    landmarks: tuple[tuple[float, float], ...]

    @property
    def size(self) -> float:
        """The shorter side of the box, in pixels."""
        x0, y0, x1, y1 = self.box
        return float(min(x1 - x0, y1 - y0))

    def to_dict(self) -> dict:
        return {
            "box": [round(v, 1) for v in self.box],
            "probability": round(self.probability, 4),
            "landmarks": [[round(x, 1), round(y, 1)] for x, y in self.landmarks],
        }


class FaceDetector:
    """MTCNN built once; ``detect`` returns faces sorted by decreasing box area.

    ``max_side``: an image whose longer side is larger is searched on a copy shrunk to that
    side, and the boxes and landmarks are scaled back to the image's own pixels (alignment
    then crops from the full-resolution image). MTCNN's image pyramid makes its cost grow with
    the pixel count: a 14-megapixel phone photo took 3.9 s on one thread (beside a training run)
    against 0.28 s at 1600 px, with the same faces found. The price: faces under
    ``min_face_size`` x (longer side / ``max_side``) pixels are not looked for. ``None``
    searches every image at full size.
    """

    def __init__(self, min_face_size: int = 20, min_probability: float = 0.9, device: str = "cpu",
                 max_side: int | None = None) -> None:
        facenet_pytorch = import_facenet_pytorch()
        self.min_probability = min_probability
        self.max_side = max_side or None
        self._mtcnn = facenet_pytorch.MTCNN(
            keep_all=True, min_face_size=min_face_size, post_process=False, device=torch.device(device)
        )
        self._mtcnn.eval()

    @torch.inference_mode()
    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an HxWx3 RGB uint8 image."""
        scale = 1.0
        if self.max_side and max(image.shape[:2]) > self.max_side:
            scale = self.max_side / max(image.shape[:2])
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        if image.shape[0] < 12 or image.shape[1] < 12:
            return []
        boxes, probs, points = self._mtcnn.detect(image, landmarks=True)
        if boxes is None:
            return []
        faces = [
            DetectedFace(
                box=tuple(float(v) / scale for v in box),
                probability=float(prob),
                landmarks=tuple((float(x) / scale, float(y) / scale) for x, y in np.asarray(pts, dtype=np.float64)),
            )
            for box, prob, pts in zip(boxes, probs, points)
            if prob is not None and float(prob) >= self.min_probability
        ]
        faces.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
        return faces
