"""The one place that turns pixels into model input: alignment, crop, resize, normalisation.

Training, enrollment and identification all call these functions with the recipe stored in the
model artifact, so the model sees at serving time exactly what it saw in training.

The canonical frame is CelebA's own alignment (178x218, eyes level). ``TEMPLATE`` holds where
MTCNN puts the five landmarks in that frame (median over 300 celeba1k images), so a face found
by the detector in any photo is warped into the same frame; the model's crop is a fixed box in it
(the ``celeba_ir`` benchmark crops, ``[77:-41, 45:-50]`` of the 178x218 image).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch

# left eye, right eye, nose, left mouth corner, right mouth corner; (x, y) in the 178x218 frame
TEMPLATE = ((70.16, 112.29), (109.20, 112.30), (89.48, 136.84), (72.74, 153.66), (106.46, 153.48))
PIXEL_MEAN = 127.5
PIXEL_STD = 128.0
FRAME_SIZE = (178, 218)  # (width, height) of the canonical frame that TEMPLATE lives in


@dataclass(frozen=True)
class AlignmentRecipe:
    """How a face becomes a model input; serialised into the model artifact."""

    frame_size: tuple[int, int] = FRAME_SIZE  # (width, height) of the canonical aligned frame
    template: tuple[tuple[float, float], ...] = TEMPLATE
    crop_box: tuple[int, int, int, int] = (45, 77, 128, 177)  # x0, y0, x1, y1 in the frame
    input_size: tuple[int, int] = (96, 80)  # (height, width) fed to the network
    pixel_mean: float = PIXEL_MEAN
    pixel_std: float = PIXEL_STD

    @property
    def crop_size(self) -> tuple[int, int]:
        """(width, height) of the crop box."""
        x0, y0, x1, y1 = self.crop_box
        return x1 - x0, y1 - y0

    def to_dict(self) -> dict:
        return {k: (list(map(list, v)) if k == "template" else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "AlignmentRecipe":
        return cls(
            frame_size=tuple(d["frame_size"]),
            template=tuple(tuple(p) for p in d["template"]),
            crop_box=tuple(d["crop_box"]),
            input_size=tuple(d["input_size"]),
            pixel_mean=float(d.get("pixel_mean", PIXEL_MEAN)),
            pixel_std=float(d.get("pixel_std", PIXEL_STD)),
        )


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation+uniform scale+translation mapping ``src`` points onto ``dst``
    (Umeyama 1991). Returns a 2x3 matrix for ``cv2.warpAffine``."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / len(src)
    scale = (s * d).sum() / var_src if var_src > 0 else 1.0
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * rot @ src_mean
    return matrix


def align_face(image: np.ndarray, landmarks: np.ndarray, recipe: AlignmentRecipe) -> np.ndarray:
    """Warp the face with these 5 landmarks into the recipe's crop (crop-sized uint8 RGB)."""
    x0, y0, _, _ = recipe.crop_box
    target = np.asarray(recipe.template, dtype=np.float64) - np.array([x0, y0], dtype=np.float64)
    matrix = similarity_transform(np.asarray(landmarks, dtype=np.float64), target)
    return cv2.warpAffine(image, matrix, recipe.crop_size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def align_frame(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Warp the face with these 5 landmarks into the whole canonical frame (218x178 uint8 RGB,
    ``TEMPLATE`` points): model-independent, so a face kept in it can be cropped again by any
    later recipe (:func:`frame_to_input`)."""
    matrix = similarity_transform(np.asarray(landmarks, dtype=np.float64), np.asarray(TEMPLATE, dtype=np.float64))
    return cv2.warpAffine(image, matrix, FRAME_SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def frame_to_input(frame: np.ndarray, recipe: AlignmentRecipe) -> np.ndarray:
    """A canonical frame (:func:`align_frame`) as this recipe's network input. A recipe in the
    canonical frame only slices its crop box (the same pixels :func:`align_face` gives from the
    photo); another frame or template is reached by warping the frame's own landmarks."""
    if recipe.frame_size == FRAME_SIZE and tuple(map(tuple, recipe.template)) == TEMPLATE \
            and frame.shape[:2] == (FRAME_SIZE[1], FRAME_SIZE[0]):
        crop = crop_aligned_frame(frame, recipe)
    else:
        crop = align_face(frame, np.asarray(TEMPLATE), recipe)
    return resize_to_input(crop, recipe)


def crop_aligned_frame(image: np.ndarray, recipe: AlignmentRecipe) -> np.ndarray:
    """Crop an image that is already in the canonical aligned frame (e.g. CelebA's
    ``img_align_celeba``); frames of another size are treated as scaled copies of it."""
    height, width = image.shape[:2]
    fw, fh = recipe.frame_size
    sx, sy = width / fw, height / fh
    x0, y0, x1, y1 = recipe.crop_box
    box = (round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))
    return image[box[1]:box[3], box[0]:box[2]]


def resize_to_input(crop: np.ndarray, recipe: AlignmentRecipe) -> np.ndarray:
    """Resize a face crop to the network's input size (HxWx3 uint8)."""
    height, width = recipe.input_size
    if crop.shape[:2] == (height, width):
        return np.ascontiguousarray(crop)
    shrinking = crop.shape[0] > height
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def to_tensor(batch: np.ndarray, recipe: AlignmentRecipe) -> torch.Tensor:
    """NxHxWx3 uint8 -> Nx3xHxW float32, normalised as in training (the only place that does)."""
    tensor = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    return (tensor - recipe.pixel_mean) / recipe.pixel_std
