"""The recognition pipeline in one object: decode, detect, align, embed."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .artifact import ModelArtifact, default_model_path
from .detector import DetectedFace, FaceDetector
from .embedder import Embedder
from .errors import ModelArtifactError
from .images import ImageSource, load_image
from .int8 import REMAKE as INT8_REMAKE
from .int8 import find_quantization, quantization_path
from .preprocess import FRAME_SIZE, align_face, align_frame, crop_aligned_frame, frame_to_input, resize_to_input
from .score_norm import find_calibration
from .stranger import find_curve


@dataclass(frozen=True)
class FaceEmbedding:
    """A detected face and its embedding."""

    face: DetectedFace
    embedding: np.ndarray  # (dim,) float32, unit norm


class Recognizer:
    """Built once from a model artifact; every method is inference only.

    ``crop_mode`` for :meth:`embed_images` says what an input image already is:
    ``"detect"`` any photo (find faces first), ``"frame"`` an image in the canonical aligned
    frame such as CelebA's ``img_align_celeba`` (cropped by the recipe), ``"crop"`` a face crop
    that only needs resizing (e.g. the ``celeba_ir`` crops).
    """

    def __init__(self, model: str | os.PathLike | ModelArtifact | None = None, device: str = "cpu",
                 threads: int | None = None, min_face_size: int = 20, min_probability: float = 0.9,
                 flip_average: bool | None = None, max_image_bytes: int | None = 20 * 1024 * 1024,
                 max_image_pixels: int | None = 40_000_000, detect_max_side: int | None = None,
                 backend: str = "torch") -> None:
        if threads:
            torch.set_num_threads(threads)
        if model is None:  # MODEL_PATH, else the shipped release model
            model = default_model_path()
        self.artifact = model if isinstance(model, ModelArtifact) else ModelArtifact.load(model)
        self.recipe = self.artifact.recipe
        self.version = self.artifact.version
        self.threshold = self.artifact.threshold
        # AS-norm's threshold, from the file beside the model (None: the cosine alone)
        self.score_norm = None if isinstance(model, ModelArtifact) else find_calibration(model, self.version)
        # how often a stranger passes one enrolled person, per threshold (None: no curve beside the model)
        self.strangers = None if isinstance(model, ModelArtifact) else find_curve(model, self.version)
        self.dim = self.artifact.embedding_size
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        # int8 is the embedding network's alone: MTCNN's R/O-Nets stay fp32 under ONNX Runtime
        self.detector = FaceDetector(min_face_size=min_face_size, min_probability=min_probability, device=device,
                                     max_side=detect_max_side, backend="onnx" if backend == "onnx-int8" else backend)
        int8 = None
        if backend == "onnx-int8":
            int8 = None if isinstance(model, ModelArtifact) else find_quantization(model, self.version)
            if int8 is None:
                where = "a model given as an object" if isinstance(model, ModelArtifact) else quantization_path(model)
                raise ModelArtifactError(f"the onnx-int8 backend needs this model's int8 parameters, and there are "
                                         f"none for {self.version} ({where}); {INT8_REMAKE}")
        self.int8 = int8
        self.embedder = Embedder(self.artifact, device=device, flip_average=flip_average, backend=backend, int8=int8)

    def load(self, source: ImageSource) -> np.ndarray:
        """Decode with this recognizer's size limits."""
        return load_image(source, max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)

    def detect(self, image: ImageSource) -> list[DetectedFace]:
        return self.detector.detect(self.load(image))

    def align(self, image: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        """Aligned input-size crops (Nx H x W x 3 uint8) for these faces of ``image``."""
        height, width = self.recipe.input_size
        crops = [resize_to_input(align_face(image, np.array(f.landmarks), self.recipe), self.recipe) for f in faces]
        return np.stack(crops) if crops else np.zeros((0, height, width, 3), np.uint8)

    def align_frames(self, image: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        """These faces in the model-independent canonical frame (N x 218 x 178 x 3 uint8): what
        the service keeps of an enrolled photo, so that a later model can embed it again."""
        frames = [align_frame(image, np.array(f.landmarks)) for f in faces]
        return np.stack(frames) if frames else np.zeros((0, FRAME_SIZE[1], FRAME_SIZE[0], 3), np.uint8)

    def frames_to_input(self, frames: np.ndarray) -> np.ndarray:
        """Canonical frames (:meth:`align_frames`) as this model's input-size crops."""
        height, width = self.recipe.input_size
        crops = [frame_to_input(f, self.recipe) for f in frames]
        return np.stack(crops) if crops else np.zeros((0, height, width, 3), np.uint8)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        return self.embedder.embed(crops)

    def analyze(self, image: ImageSource, min_face_size: int | None = None) -> list[FaceEmbedding]:
        """Every face in the image with its embedding, largest face first; ``min_face_size``
        (pixels) skips smaller faces and the detector work of looking for them."""
        pixels = self.load(image)
        faces = self.detector.detect(pixels, min_face_size)
        vectors = self.embed(self.align(pixels, faces))
        return [FaceEmbedding(face, vec) for face, vec in zip(faces, vectors)]

    def prepare(self, image: ImageSource, crop_mode: str = "crop") -> np.ndarray:
        """One input-size crop for an image that already shows one face (no detection)."""
        pixels = self.load(image)
        if crop_mode == "frame":
            pixels = crop_aligned_frame(pixels, self.recipe)
        elif crop_mode != "crop":
            raise ValueError(f"crop_mode must be 'frame' or 'crop', got {crop_mode!r}")
        return resize_to_input(pixels, self.recipe)

    def embed_images(self, images: list[ImageSource], crop_mode: str = "crop") -> np.ndarray:
        """Embeddings of images that already are faces (``crop_mode`` 'crop' or 'frame')."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed(np.stack([self.prepare(img, crop_mode) for img in images]))
