"""The objects one server process works with, bundled and hung on the Flask app.

Passing one explicit bundle (instead of module globals) lets a test build two apps against
two Redis servers in one process, and makes every dependency of a view visible.
"""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from redis import Redis
from rq import Queue

from recognizer import Recognizer

from .cache import GalleryCache
from .config import ServiceConfig
from .metrics import Metrics
from .store import GalleryStore

EXTENSION = "facerec"


@dataclass
class Service:
    config: ServiceConfig
    recognizer: Recognizer
    redis: Redis
    store: GalleryStore
    cache: GalleryCache
    queue: Queue
    metrics: Metrics


def current_service() -> Service:
    return current_app.extensions[EXTENSION]
