"""Files kept beside a model (``<model stem>.<kind>.json``): what was measured after training.

Why: a threshold or curve measured on a released model must not change its weights or version
(the version is a hash of both, and a new version means re-embedding every gallery). So each
measurement lives in a small JSON file next to the model, tagged with a format name and the model
version it belongs to, and is only used when that version matches.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from .atomic import atomic_write_bytes
from .errors import ModelArtifactError

log = logging.getLogger(__name__)


class ForModel(Protocol):
    model_version: str


T = TypeVar("T", bound=ForModel)


def sidecar_path(model_path: str | os.PathLike[str], kind: str) -> Path:
    """``<model stem>.<kind>.json`` beside the model."""
    p = Path(model_path)
    return p.with_name(f"{p.stem}.{kind}.json")


def write_sidecar(path: str | os.PathLike[str], fmt: str, fields: dict[str, Any]) -> None:
    """Write atomically, format tag first."""
    atomic_write_bytes(Path(path), (json.dumps({"format": fmt, **fields}, indent=1) + "\n").encode())


def read_sidecar(path: str | os.PathLike[str], fmt: str, what: str) -> dict[str, Any]:
    """The file's fields; ModelArtifactError naming what is wrong (unreadable, not ``fmt``)."""
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelArtifactError(f"cannot read the {what} {path}: {exc}") from None
    if not isinstance(body, dict) or body.get("format") != fmt:
        raise ModelArtifactError(f"{path} is not a {what} (format {fmt!r})")
    return body


def find_sidecar(model_path: str | os.PathLike[str], kind: str, model_version: str,
                 load: Callable[[Path], T], unused: str) -> T | None:
    """The file beside a model, if there is one and it is this model's; otherwise None, with a log
    line starting ``unused`` that says why a file there is not used."""
    path = sidecar_path(model_path, kind)
    if not path.is_file():
        return None
    try:
        found = load(path)
    except ModelArtifactError as exc:
        log.warning("%s: %s", unused, exc.message)
        return None
    if found.model_version != model_version:
        log.warning("%s: %s is for model %s, not %s", unused, path, found.model_version, model_version)
        return None
    return found
