"""Reading requests: images (multipart or base64 JSON) and validated parameters.

Every problem becomes a :class:`FaceServiceError` that names the field, so a client can fix
its request from the error alone, and no view ever sees half-parsed input. Size limits are
checked before any decoding: bytes first, then the pixel count from the image header, so a
decompression bomb is refused without being expanded.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

from flask import Request
from PIL import Image

from recognizer.errors import (
    BadImageError,
    ImageTooLargeError,
    InvalidRequestError,
    UnsupportedMediaTypeError,
)

from .config import ServiceConfig

JSON_TYPES = ("application/json",)
MAX_JSON_DEPTH = 32  # nesting levels of any JSON we accept (a body, a metadata field)
MULTIPART = "multipart/form-data"
FORM_URLENCODED = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class Upload:
    """One image as received: raw bytes, the client's filename if any, the field it came in."""

    data: bytes
    field: str
    filename: str | None = None


class RequestBody:
    """The parameters and images of one request, whatever its content type.

    ``params`` merges the query string with form fields or the JSON object (body wins), so
    ``k=3`` works as ``?k=3``, a form field or ``{"k": 3}`` alike.
    """

    def __init__(self, request: Request, config: ServiceConfig, *, allow_form_urlencoded: bool = False) -> None:
        self.config = config
        mimetype = (request.mimetype or "").lower()
        self.kind: str
        self.files: dict[str, list[Upload]] = {}
        params: dict[str, Any] = {k: v for k, v in request.args.items()}
        if mimetype in JSON_TYPES or mimetype.endswith("+json"):
            self.kind = "json"
            body = parse_json(request.get_data(cache=True), "body", what="the body")
            if not isinstance(body, dict):
                raise InvalidRequestError("the JSON body must be an object", field="body")
            params.update(body)
        elif mimetype == MULTIPART or (allow_form_urlencoded and mimetype == FORM_URLENCODED):
            self.kind = "form"
            params.update({k: v for k, v in request.form.items()})
            for name in request.files:
                self.files[name] = [
                    Upload(f.read(config.max_image_bytes + 1), name, f.filename or None)
                    for f in request.files.getlist(name)
                ]
        else:
            accepted = "multipart/form-data or application/json"
            if allow_form_urlencoded:
                accepted = "application/json, multipart/form-data or application/x-www-form-urlencoded"
            raise UnsupportedMediaTypeError(
                f"unsupported Content-Type {mimetype or '(none)'!r}; send {accepted}",
                content_type=mimetype or None,
            )
        self.params = params

    # -- images ------------------------------------------------------------------------

    def image(self, field: str = "image", required: bool = True) -> Upload | None:
        """The single image of ``field`` (multipart file or base64 string)."""
        if self.kind == "form":
            uploads = self.files.get(field, [])
            if len(uploads) > 1:
                raise InvalidRequestError(f"field {field!r} takes one image, got {len(uploads)}", field=field)
            if not uploads:
                if field in self.params:
                    raise InvalidRequestError(f"field {field!r} must be a file part, not a text field", field=field)
                if required:
                    raise InvalidRequestError(f"an image is required in field {field!r}", field=field)
                return None
            return self.check_bytes(uploads[0])
        value = self.params.get(field)
        if value is None:
            if required:
                raise InvalidRequestError(f"an image is required in field {field!r} (base64)", field=field)
            return None
        return self.check_bytes(Upload(decode_base64(value, field, self.config.max_image_bytes), field))

    def images(self, field: str = "images", source: Mapping[str, Any] | None = None,
               where: str | None = None) -> list[Upload]:
        """A non-empty list of images: multipart files ``images`` (and ``image``), or a JSON
        list of base64 strings in ``source[field]``."""
        where = where or field
        if self.kind == "form" and source is None:
            uploads = [*self.files.get(field, []), *self.files.get("image", [])]
            checked = [self.check_bytes(u) for u in uploads]
        else:
            values = (self.params if source is None else source).get(field)
            if values is None:
                raise InvalidRequestError(f"{where} is required: a list of base64 images", field=where)
            if not isinstance(values, list):
                raise InvalidRequestError(f"{where} must be a list of base64 images", field=where)
            checked = [self.check_bytes(Upload(decode_base64(v, f"{where}[{i}]", self.config.max_image_bytes),
                                               f"{where}[{i}]"))
                       for i, v in enumerate(values)]
        if not checked:
            raise InvalidRequestError(f"at least one image is required in {where!r}", field=where)
        return checked

    def check_bytes(self, upload: Upload) -> Upload:
        """Byte limit, then pixel limit from the header (no decode). Undecodable bytes pass
        here; the decoder (or the enrollment job) reports them."""
        check_image_limits(upload.data, upload.field, self.config)
        return upload

    # -- parameters --------------------------------------------------------------------

    def get(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)


def check_image_limits(data: bytes, field: str, config: ServiceConfig) -> None:
    if not data:
        raise BadImageError(f"the image in {field!r} is empty (0 bytes)", field=field)
    if len(data) > config.max_image_bytes:
        raise ImageTooLargeError(
            f"the image in {field!r} is over the limit of {config.max_image_bytes} bytes", field=field,
            limit_bytes=config.max_image_bytes,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            width, height = Image.open(io.BytesIO(data)).size  # reads the header only
    except Image.DecompressionBombError:
        width, height = config.max_image_pixels + 1, 1
    except Exception:
        return
    if width * height > config.max_image_pixels:
        raise ImageTooLargeError(
            f"the image in {field!r} is {width}x{height} pixels, over the limit of {config.max_image_pixels}",
            field=field, limit_pixels=config.max_image_pixels,
        )


def decode_base64(value: Any, field: str, max_bytes: int) -> bytes:
    """Standard or URL-safe base64, with or without a ``data:image/...;base64,`` prefix."""
    if not isinstance(value, str):
        raise InvalidRequestError(f"{field!r} must be a base64 string", field=field)
    text = value.strip()
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or ";base64" not in head:
            raise InvalidRequestError(f"{field!r} is a data URL without base64 content", field=field)
    text = "".join(text.split())
    if len(text) * 3 // 4 > max_bytes + 3:
        raise ImageTooLargeError(f"the image in {field!r} is over the limit of {max_bytes} bytes", field=field,
                                 limit_bytes=max_bytes)
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"{field!r} is not valid base64", field=field) from None


def int_param(value: Any, name: str, default: int, lo: int, hi: int) -> int:
    """An integer in [lo, hi] from JSON (int) or a form/query string."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be an integer, got {value!r}", field=name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip(), 10)
        except ValueError:
            raise InvalidRequestError(f"{name} must be an integer, got {value!r}", field=name) from None
    if not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an integer, got {value!r}", field=name)
    if not lo <= value <= hi:
        raise InvalidRequestError(f"{name} must be between {lo} and {hi}, got {value}", field=name)
    return value


def float_param(value: Any, name: str, default: float, lo: float, hi: float) -> float:
    """A finite number in [lo, hi] from JSON or a form/query string."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}", field=name)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidRequestError(f"{name} must be a number, got {value!r}", field=name) from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r}", field=name)
    if not lo <= value <= hi:
        raise InvalidRequestError(f"{name} must be between {lo} and {hi}, got {value}", field=name)
    return float(value)


def json_object_param(value: Any, name: str) -> dict[str, Any] | None:
    """A JSON object given as an object (JSON body) or as a JSON string (form field)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = parse_json(value, name)
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{name} must be a JSON object", field=name)
    check_depth(value, name)
    return value


def parse_json(text: str | bytes, field: str, what: str | None = None) -> Any:
    """``json.loads`` whose every failure is a 400 naming ``field``: malformed, not UTF-8, or
    nested deeper than :data:`MAX_JSON_DEPTH` (deep enough input makes the parser itself raise
    RecursionError)."""
    what = what or field
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
    except ValueError:
        raise InvalidRequestError(f"{what} is not valid JSON", field=field) from None
    else:
        check_depth(value, field, what)
        return value
    raise InvalidRequestError(f"{what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)", field=field)


def check_depth(value: Any, field: str, what: str | None = None) -> None:
    """Refuse JSON nested deeper than :data:`MAX_JSON_DEPTH` (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise InvalidRequestError(f"{what or field} is nested too deeply (at most {MAX_JSON_DEPTH} levels)",
                                          field=field)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


def str_param(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a string", field=name)
    return value
