"""The gallery of enrolled people and the FAISS index behind face identification."""
from .faiss_index import VectorIndex
from .gallery import Gallery, Match, PersonInfo, decide
from .snapshot import SnapshotIndex, build_snapshot
from .vectors import cosine_to_angle_deg, mean_embedding

__all__ = [
    "Gallery",
    "Match",
    "PersonInfo",
    "SnapshotIndex",
    "VectorIndex",
    "build_snapshot",
    "cosine_to_angle_deg",
    "decide",
    "mean_embedding",
]
