"""Face detection with facenet-pytorch's MTCNN (its weights ship inside the pip package)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ._torchvision_shim import import_facenet_pytorch
from .errors import InvalidRequestError

#: MTCNN's P-Net sees 12x12 windows: a smaller minimum would upsample the image.
MIN_FACE_SIZE_FLOOR = 12


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

    ``min_face_size`` (per detector, or per call) is where MTCNN's image pyramid starts: its
    first scale shrinks the image by 12 / ``min_face_size``, so the first-stage cost falls with
    its square (80 instead of 20 px: about 16x fewer pixels for P-Net). A checkpoint camera that
    only needs faces of 80 px and more should say so.
    """

    def __init__(self, min_face_size: int = 20, min_probability: float = 0.9, device: str = "cpu",
                 max_side: int | None = None, backend: str = "torch") -> None:
        if backend not in ("torch", "onnx"):
            raise ValueError(f"detector backend must be 'torch' or 'onnx', got {backend!r}")
        facenet_pytorch = import_facenet_pytorch()
        self.min_face_size = check_min_face_size(min_face_size)
        self.min_probability = min_probability
        self.max_side = max_side or None
        self._mtcnn = facenet_pytorch.MTCNN(
            keep_all=True, min_face_size=min_face_size, post_process=False, device=torch.device(device)
        )
        self._mtcnn.eval()
        # MTCNN.detect reads its min_face_size attribute; calling the function under it with a
        # per-call size keeps one shared MTCNN safe for concurrent requests.
        self._detect_face = facenet_pytorch.models.utils.detect_face.detect_face
        self._rnet, self._onet = self._mtcnn.rnet, self._mtcnn.onet
        if backend == "onnx":  # R-Net and O-Net under ONNX Runtime; P-Net is no faster there
            from .onnx_runtime import OnnxNetwork, OnnxStage

            threads = torch.get_num_threads()
            self._rnet, self._onet = (
                OnnxStage(OnnxNetwork(net, f"mtcnn-{name}-facenet-pytorch2.6.0", torch.zeros(2, 3, side, side), threads))
                for name, net, side in (("rnet", self._mtcnn.rnet, 24), ("onet", self._mtcnn.onet, 48)))

    def _pyramid_start(self, wanted: float) -> float:
        """The ``minsize`` to hand MTCNN so that its pyramid is the detector's own pyramid
        without the leading (largest, dearest) scales that only find faces under ``wanted``
        pixels. Same scales, so the faces that remain get the same boxes as without a minimum."""
        if wanted <= self.min_face_size:
            return float(self.min_face_size)
        factor = float(self._mtcnn.factor)
        # One scale is kept below ``wanted``: a face just above the minimum is often boxed from
        # that finer scale (without it, a 91 px face at a minimum of 80 moved to IoU 0.87).
        skip = int(math.floor(math.log(wanted / self.min_face_size) / -math.log(factor) + 1e-9)) - 1
        if skip <= 0:
            return float(self.min_face_size)
        scale = 12.0 / self.min_face_size
        for _ in range(skip):  # the same float steps as detect_face's own loop
            scale *= factor
        return 12.0 / scale

    @torch.inference_mode()
    def detect(self, image: np.ndarray, min_face_size: int | None = None) -> list[DetectedFace]:
        """Faces in an HxWx3 RGB uint8 image.

        ``min_face_size`` (in the image's own pixels) raises this call's smallest face above
        the detector's by dropping pyramid scales; it never lowers it, so a request cannot make
        detection dearer than the deployment allows. Faces a little under it (down to two
        pyramid steps, x0.5) may still be found.
        """
        wanted = self.min_face_size if min_face_size is None else check_min_face_size(min_face_size)
        scale = 1.0
        if self.max_side and max(image.shape[:2]) > self.max_side:
            scale = self.max_side / max(image.shape[:2])
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        if min(image.shape[:2]) < max(12.0, wanted * scale):
            return []  # no face of the wanted size fits (and MTCNN's pyramid would be empty)
        minsize = self._pyramid_start(wanted * scale)
        boxes, points = self._detect_face(image, minsize, self._mtcnn.pnet, self._rnet, self._onet,
                                          self._mtcnn.thresholds, self._mtcnn.factor, self._mtcnn.device)
        boxes, points = np.asarray(boxes[0]), np.asarray(points[0])
        if len(boxes) == 0:
            return []
        boxes, probs = boxes[:, :4], boxes[:, 4]
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


def check_min_face_size(value: object) -> int:
    """An integer of at least :data:`MIN_FACE_SIZE_FLOOR` pixels, else InvalidRequestError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidRequestError(f"min_face_size must be an integer number of pixels, got {value!r}",
                                  field="min_face_size")
    if value < MIN_FACE_SIZE_FLOOR:
        raise InvalidRequestError(f"min_face_size must be at least {MIN_FACE_SIZE_FLOOR} px, got {value}",
                                  field="min_face_size")
    return int(value)
