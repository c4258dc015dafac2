"""Face detection, alignment and embeddings from a model artifact made by ``trainer``."""
from .artifact import ModelArtifact
from .detector import DetectedFace, FaceDetector
from .errors import FaceServiceError
from .preprocess import AlignmentRecipe
from .recognizer import FaceEmbedding, Recognizer

__all__ = ["AlignmentRecipe", "DetectedFace", "FaceDetector", "FaceEmbedding", "FaceServiceError",
           "ModelArtifact", "Recognizer"]
