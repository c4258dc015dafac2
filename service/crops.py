"""The kept face crop: an enrolled face in the canonical aligned frame (178x218, ``TEMPLATE``
landmarks), stored as JPEG bytes beside its photo's hash so that a later model, with another
recipe, can embed it again without the original photo (``upgrade.py``).

JPEG at quality 90: about 10 KB a face (PNG, lossless, is about 70 KB). What the loss costs a
re-embedding is measured by ``bench/model_upgrade.py``.
"""
from __future__ import annotations

import cv2
import numpy as np

from recognizer.preprocess import FRAME_SIZE

JPEG_QUALITY = 90


def encode_frame(frame: np.ndarray) -> bytes:
    """RGB uint8 frame -> JPEG bytes."""
    if frame.shape != (FRAME_SIZE[1], FRAME_SIZE[0], 3):
        raise ValueError(f"a kept crop must be a {FRAME_SIZE[0]}x{FRAME_SIZE[1]} RGB frame, got {frame.shape}")
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(frame[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding of a face crop failed")
    return data.tobytes()


def decode_frame(data: bytes) -> np.ndarray | None:
    """JPEG bytes -> RGB uint8 frame, or None if they are not a frame (damaged or foreign)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.shape != (FRAME_SIZE[1], FRAME_SIZE[0], 3):
        return None
    return np.ascontiguousarray(image[:, :, ::-1])
