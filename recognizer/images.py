"""Turn whatever a caller hands us (bytes, path, PIL image, array) into an RGB uint8 array.

Every entry point (CLI, worker, server, trainer) decodes through here, so EXIF orientation,
grayscale/RGBA/CMYK/palette images and size limits are handled the same way everywhere.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadImageError, ImageTooLargeError

ImageSource = Union[bytes, bytearray, memoryview, str, os.PathLike, Image.Image, np.ndarray]

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit integer or float grayscale
        return Image.fromarray(_gray_to_uint8(np.asarray(img), img.mode)).convert("RGB")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        # Composite transparency onto white rather than letting it turn black.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, I, F, CMYK, YCbCr, 1 ...


def _gray_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth grayscale to 8 bits by its range, not by clipping: ``convert("RGB")``
    clips a 16-bit image's 0..65535 to 0..255, which turns a face almost white. ``I;16*`` is
    16-bit; ``I`` (32-bit) is taken as 8-bit, 16-bit or its own peak, whichever its values fit;
    ``F`` as [0, 1] when it fits, else the same as ``I``."""
    values = np.nan_to_num(arr.astype(np.float64))
    peak = float(values.max()) if values.size else 0.0
    if mode.startswith("I;16"):
        full = 65535.0
    elif mode == "F" and peak <= 1.0:
        full = 1.0
    else:
        full = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    return np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8)


def load_image(
    source: ImageSource,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode ``source`` into an HxWx3 RGB uint8 array, upright per its EXIF orientation."""
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        return np.asarray(_to_rgb(ImageOps.exif_transpose(source)))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise BadImageError(f"image file not found: {path}")
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise ImageTooLargeError(
                f"image file is {path.stat().st_size} bytes, over the limit of {max_bytes}"
            )
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        raise BadImageError(f"cannot read an image from a {type(source).__name__}")
    return decode_bytes(data, max_bytes=max_bytes, max_pixels=max_pixels)


def decode_bytes(
    data: bytes, max_bytes: int | None = DEFAULT_MAX_BYTES, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode encoded image bytes, refusing empty, truncated, oversized or bomb-like inputs."""
    if not data:
        raise BadImageError("the image is empty (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
                )
            img.load()  # forces the full decode: truncated files fail here
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadImageError("not a readable image: the data is in no image format we know") from exc
    except Exception as exc:  # PIL raises many types (OSError for truncation, SyntaxError, ...)
        raise BadImageError(f"not a readable image: {exc}") from exc
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not cost us the picture
        pass
    return np.asarray(_to_rgb(img))


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise BadImageError(f"an image array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)
