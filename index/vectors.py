"""Vector arithmetic and input checks shared by the index and the gallery.

A person's vector is defined here, in one place, so the CLI gallery, the server and
the benchmarks all compare faces against the same thing.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from recognizer.errors import InvalidRequestError

# Below this norm a vector has no usable direction (e.g. all zeros, or two
# opposite embeddings averaging out), so it cannot be normalised.
_MIN_NORM = 1e-12


def mean_embedding(vectors: np.ndarray) -> np.ndarray:
    """The L2-normalised mean of a person's image embeddings (float32, shape (d,)).

    This is the product's definition of a person's vector: averaging normalised
    embeddings of several photos cancels per-photo noise (pose, light), and
    normalising again keeps inner product equal to cosine. Accumulates in float64
    so that the result does not depend on how many images were added at once.
    """
    arr = _as_float_array(vectors, "vectors")
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidRequestError(
            f"mean_embedding needs a non-empty (n, d) array, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidRequestError("embeddings contain NaN or infinite values")
    mean = arr.astype(np.float64).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if not np.isfinite(norm) or norm < _MIN_NORM:
        raise InvalidRequestError("the mean of these embeddings is zero; it has no direction")
    return (mean / norm).astype(np.float32)


def cosine_to_angle_deg(cos: Any) -> Any:
    """Angle in degrees for a cosine (scalar or array), clipped to [-1, 1] first.

    Rounding can push the inner product of unit vectors slightly past 1, which
    would make arccos return NaN for what is really a perfect match.
    """
    angle = np.degrees(np.arccos(np.clip(np.asarray(cos, dtype=np.float64), -1.0, 1.0)))
    if np.ndim(angle) == 0:
        return float(angle)
    return angle


def l2_normalize_rows(matrix: np.ndarray, what: str = "vectors") -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows are rejected, not passed on.

    Inner product only equals cosine for unit vectors, so everything that enters
    the index or queries it goes through here.
    """
    m64 = matrix.astype(np.float64)
    norms = np.linalg.norm(m64, axis=1, keepdims=True)
    bad = np.flatnonzero(~(norms[:, 0] >= _MIN_NORM))
    if bad.size:
        raise InvalidRequestError(
            f"{what}: row {int(bad[0])} has zero length and cannot be normalised"
        )
    return np.ascontiguousarray(m64 / norms, dtype=np.float32)


def check_matrix(values: Any, dim: int, what: str = "vectors") -> np.ndarray:
    """Validate an (n, dim) array of finite reals; return it as C-contiguous float32.

    A (dim,) vector is accepted as one row. Errors name the expected and the actual
    shape, because a wrong dimension almost always means a model/gallery mix-up.
    """
    arr = _as_float_array(values, what)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidRequestError(
            f"{what}: expected shape (n, {dim}) or ({dim},), got {arr.shape}",
            expected_dim=dim,
            got_shape=list(arr.shape),
        )
    if arr.shape[1] != dim:
        raise InvalidRequestError(
            f"{what}: expected dimension {dim}, got {arr.shape[1]}",
            expected_dim=dim,
            got_dim=int(arr.shape[1]),
        )
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise InvalidRequestError(f"{what}: contains NaN or infinite values (or overflows float32)")
    return out


def _as_float_array(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{what}: not a numeric array ({exc})") from None
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise InvalidRequestError(f"{what}: expected real numbers, got dtype {arr.dtype}")
    return arr
