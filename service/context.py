"""The objects one server process works with, bundled and hung on the Flask app.

Passing one explicit bundle (instead of module globals) lets a test build two apps against
two Redis servers in one process, and makes every dependency of a view visible.

A process may hold two models during an upgrade (:mod:`service.models`); each has its own
store view and FAISS cache, and each request is answered by one of them, chosen once at its
start (:func:`current_service`) from what Redis says is serving and complete.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import redis as redis_lib
from flask import current_app, g, has_request_context
from redis import Redis
from rq import Queue

from recognizer import Recognizer

from .cache import GalleryCache
from .config import ServiceConfig
from .metrics import Metrics
from .models import ModelSet
from .store import GalleryStore
from .versions import choose_version, read_state

EXTENSION = "facerec"


@dataclass
class Service:
    config: ServiceConfig
    models: ModelSet
    redis: Redis
    stores: dict[str, GalleryStore]
    caches: dict[str, GalleryCache]
    queue: Queue
    metrics: Metrics
    version: str = ""  # the model version this view answers with ("" = the primary)

    @property
    def answering(self) -> str:
        return self.version or self.models.primary.version

    @property
    def recognizer(self) -> Recognizer:
        return self.models[self.answering]

    @property
    def store(self) -> GalleryStore:
        return self.stores[self.answering]

    @property
    def cache(self) -> GalleryCache:
        return self.caches[self.answering]

    def for_request(self) -> "Service":
        """This service answering with the model Redis says to (one round trip, and none at
        all for a process holding one model). If Redis is down the primary answers, and the
        request meets the outage (503) when it reads the gallery."""
        if len(self.models) == 1:
            return self
        try:
            state = read_state(self.store, self.models.versions)
        except redis_lib.RedisError:
            return self
        return dataclasses.replace(self, version=choose_version(state, self.models.versions))


def current_service() -> Service:
    """The service for this request (its model chosen once, at the first call), or the
    process's own bundle outside a request."""
    base: Service = current_app.extensions[EXTENSION]
    if not has_request_context():
        return base
    svc = g.get("facerec_service")
    if svc is None:
        svc = g.facerec_service = base.for_request()
    return svc
