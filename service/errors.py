"""Errors that only the service raises; like every expected error they derive from
:class:`recognizer.errors.FaceServiceError`, so one Flask handler maps them all to JSON."""
from __future__ import annotations

from recognizer.errors import FaceServiceError, NotFoundError


class ServiceUnavailableError(FaceServiceError):
    """A dependency (Redis) is unreachable: answering from stale state could resurrect a
    deleted person, so the request is refused instead."""

    status_code = 503
    code = "unavailable"


class ConfigError(FaceServiceError):
    """A setting has a value the service cannot use; raised at start-up, not per request."""

    status_code = 500
    code = "config"


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


class PersonNotFoundError(NotFoundError):
    code = "person_not_found"


class ImageNotFoundError(NotFoundError):
    code = "image_not_found"


class EnrollmentRejectedError(FaceServiceError):
    """A synchronous enrollment whose image cannot be used (too small a face)."""

    status_code = 422
    code = "enrollment_rejected"

    def __init__(self, message: str, code: str, **details: object) -> None:
        super().__init__(message, **details)
        self.code = code


class ModelVersionError(FaceServiceError):
    """A process holds none of the model versions the gallery keeps: whatever it embedded
    could not be matched by the servers, so it refuses to store it (not transient)."""

    status_code = 500
    code = "model_mismatch"


class UpgradeRefusedError(FaceServiceError):
    """A model upgrade, switch or drop that would leave someone unrecognisable."""

    status_code = 409
    code = "upgrade_refused"
