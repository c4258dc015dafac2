"""Every error the product raises on purpose derives from one base class.

Each carries an HTTP status code and a short machine-readable ``code`` so that the
server maps all of them to JSON in one error handler, and the CLI prints ``message``.
"""
from __future__ import annotations


class FaceServiceError(Exception):
    """Base of all expected errors: bad input, missing things, incompatible files."""

    status_code: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict:
        body: dict = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class BadImageError(FaceServiceError):
    """The bytes are not a decodable image (or are truncated)."""

    code = "bad_image"


class ImageTooLargeError(FaceServiceError):
    """Over the configured byte or pixel limit (decompression bombs included)."""

    status_code = 413
    code = "image_too_large"


class NoFaceError(FaceServiceError):
    """No face was found where one was required."""

    status_code = 422
    code = "no_face"


class InvalidRequestError(FaceServiceError):
    """Malformed fields or parameters."""

    code = "invalid_request"


class UnsupportedMediaTypeError(FaceServiceError):
    status_code = 415
    code = "unsupported_media_type"


class NotFoundError(FaceServiceError):
    status_code = 404
    code = "not_found"


class ConflictError(FaceServiceError):
    status_code = 409
    code = "conflict"


class AuthError(FaceServiceError):
    status_code = 401
    code = "unauthorized"


class ForbiddenError(FaceServiceError):
    status_code = 403
    code = "forbidden"


class ModelArtifactError(FaceServiceError):
    """A model file is missing, corrupt, or not one of ours."""

    status_code = 500
    code = "model_artifact"


class GalleryError(FaceServiceError):
    """A gallery file is corrupt or was made by another model version."""

    status_code = 409
    code = "gallery"
