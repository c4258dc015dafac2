"""Flood control: request rates per client (Flask-Limiter, counted in Redis so every process
shares them) and a cap on model requests running at once in each process.

A client is its API key when it sends a valid one (hashed: no key is written to Redis), else its
address (``request.remote_addr``; behind a proxy, ``TRUSTED_PROXIES`` makes that the client's
address from ``X-Forwarded-For``). Invalid keys count against the address, so inventing keys
does not buy fresh budgets. Over the rate (``RATE_LIMIT``, e.g. ``"600/minute;30/second"``) a
request gets 429 with ``Retry-After``; so does a model request (identify, verify, an added
photo) when ``MAX_INFLIGHT`` of them already run in this process, or ``MAX_INFLIGHT_PER_CLIENT``
of the same client's -- one 25-megapixel photo costs seconds of CPU, and queueing more behind it
only makes every answer late. /health and /metrics
are never limited (load balancers and scrapers must always get through).
"""
from __future__ import annotations

import functools
import hashlib
import threading
from collections import Counter
from typing import Callable, TypeVar

from flask import Flask, current_app, request
from flask_limiter import Limiter
from werkzeug.exceptions import TooManyRequests

from .auth import presented_key, valid_key
from .config import ServiceConfig
from .context import current_service

F = TypeVar("F", bound=Callable)
UNLIMITED_ENDPOINTS = frozenset({"ops.health", "ops.metrics"})
INFLIGHT = "facerec.inflight"


def client_id() -> str:
    """The rate-limit bucket of this request: a valid key's hash, else the address."""
    key = presented_key()
    if key and valid_key(current_service().config, key):
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:24]
    return f"addr:{request.remote_addr or '-'}"


def install_retry_after_floor(app: Flask) -> None:
    """Every 429 says ``Retry-After: 1`` or more. Flask-Limiter writes the seconds left in its
    window, which is 0 for a per-second limit (and it overwrites the in-flight cap's own 1), and
    a client that honours 0 retries at once: measured, 4 polite clients then drew 1,900 429s in
    20 s. Install before :func:`install_limiter`: Flask runs after-request hooks newest first,
    so this one runs after the limiter's."""

    @app.after_request
    def _floor(response):
        if response.status_code == 429:
            try:
                seconds = int(response.headers.get("Retry-After", "1"))
            except ValueError:  # an HTTP date: leave it
                return response
            response.headers["Retry-After"] = str(max(1, seconds))
        return response


def install_limiter(app: Flask, config: ServiceConfig) -> Limiter | None:
    """Flask-Limiter on ``app`` with ``RATE_LIMIT`` shared by all routes per client, stored in
    Redis under ``<prefix>:ratelimit``; None when ``RATE_LIMIT`` is ``off``."""
    if not config.rate_limit or config.rate_limit.lower() == "off":
        return None
    return Limiter(
        client_id,
        app=app,
        application_limits=[config.rate_limit],
        application_limits_exempt_when=lambda: request.endpoint in UNLIMITED_ENDPOINTS,
        storage_uri=config.redis_url,
        storage_options={"socket_timeout": config.redis_socket_timeout,
                         "socket_connect_timeout": config.redis_socket_timeout},
        key_prefix=f"{config.redis_key_prefix}:ratelimit",
        strategy="moving-window",
        headers_enabled=True,
        swallow_errors=True,  # Redis away: the request itself answers 503 if it needs Redis
    )


class InflightCap:
    """At most ``limit`` model requests at once in this process, and at most ``per_client`` of
    them from one client (key or address), so one flooding client cannot take every slot; the
    next request gets a 429."""

    def __init__(self, limit: int, per_client: int) -> None:
        self.limit, self.per_client = limit, per_client
        self._lock = threading.Lock()
        self._running: Counter[str] = Counter()

    def run(self, view: Callable, *args, **kwargs):
        who = client_id()
        with self._lock:
            if sum(self._running.values()) >= self.limit or self._running[who] >= self.per_client:
                raise Busy(self.limit, self.per_client)
            self._running[who] += 1
        try:
            return view(*args, **kwargs)
        finally:
            with self._lock:
                self._running[who] -= 1
                if not self._running[who]:
                    del self._running[who]


class Busy(TooManyRequests):
    def __init__(self, limit: int, per_client: int) -> None:
        super().__init__(f"this server process already runs {limit} model requests (MAX_INFLIGHT), or "
                         f"{per_client} of yours (MAX_INFLIGHT_PER_CLIENT); retry in a second", retry_after=1)


def install_inflight_cap(app: Flask, config: ServiceConfig) -> None:
    app.extensions[INFLIGHT] = InflightCap(config.max_inflight, config.max_inflight_per_client)


def limit_inflight(view: F) -> F:
    """View decorator: the request counts against the process's ``MAX_INFLIGHT`` cap."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        return current_app.extensions[INFLIGHT].run(view, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
