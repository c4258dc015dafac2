"""Face detection, alignment and embeddings from a model artifact made by ``trainer``."""
import os

# OpenMP threads that spin at barriers turn a 2-core machine with one other busy process into a
# 20x slowdown (measured here: 11 s instead of 0.46 s for one forward pass); sleeping threads
# degrade gracefully. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from .artifact import ModelArtifact
from .detector import DetectedFace, FaceDetector
from .errors import FaceServiceError
from .preprocess import AlignmentRecipe
from .recognizer import FaceEmbedding, Recognizer

__all__ = ["AlignmentRecipe", "DetectedFace", "FaceDetector", "FaceEmbedding", "FaceServiceError",
           "ModelArtifact", "Recognizer"]
