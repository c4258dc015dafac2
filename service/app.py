"""The Flask application factory: wires config, model, Redis, cache, queue and routes.

One error handler turns every :class:`FaceServiceError` into ``{"error", "message"}`` JSON
with its status; HTTP errors raised by Flask/Werkzeug (404, 405, 413, malformed bodies)
get the same shape, and anything unexpected becomes a 500 that names no internals.
"""
from __future__ import annotations

import io
import logging
import time
import uuid
from typing import Any, Mapping

import redis
from flask import Flask, g, jsonify, request
from rq import Queue
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from recognizer import Recognizer
from recognizer.errors import AuthError, FaceServiceError

from .api import ops, v1
from .auth import startup_warnings
from .cache import GalleryCache
from .config import ServiceConfig, load_config
from .console import console
from .context import EXTENSION, Service
from .errors import ConfigError, ServiceUnavailableError
from .jobs import JOB_SERIALIZER
from .limits import install_inflight_cap, install_limiter, install_retry_after_floor
from .metrics import Metrics
from .models import ModelSet, build_models
from .store import GalleryStore

log = logging.getLogger("service")

HTTP_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
              415: "unsupported_media_type", 429: "too_many_requests"}


def connect_redis(config: ServiceConfig) -> redis.Redis:
    """A bytes-returning client (RQ and the raw embeddings need bytes) with timeouts, so a
    stuck Redis turns into a 503 instead of a hung request."""
    return redis.Redis.from_url(
        config.redis_url,
        socket_timeout=config.redis_socket_timeout,
        socket_connect_timeout=config.redis_socket_timeout,
        health_check_interval=30,
    )


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``config`` overrides environment settings by name (``REDIS_URL``,
    ``MODEL_PATH``, ``ADMIN_API_KEYS`` ...). Two non-setting keys exist for embedding and
    tests: ``RECOGNIZER`` (an already loaded :class:`Recognizer`), ``MODELS`` (a loaded
    :class:`ModelSet`, for an upgrade's two models) and ``REDIS`` (a client)."""
    overrides = dict(config or {})
    recognizer: Recognizer | None = overrides.pop("RECOGNIZER", None)
    models: ModelSet | None = overrides.pop("MODELS", None)
    conn: redis.Redis | None = overrides.pop("REDIS", None)
    cfg = load_config(overrides)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    app = Flask("service", static_folder=None)
    app.config.update(MAX_CONTENT_LENGTH=cfg.max_content_length, MAX_FORM_MEMORY_SIZE=cfg.max_content_length,
                      JSON_SORT_KEYS=False)
    app.config.update(cfg.extra)

    models = models or build_models(cfg, primary=recognizer)
    if cfg.stranger_rate > 0:  # a rule that cannot be kept must stop the start, not be dropped quietly
        for r in models:
            if r.strangers is None:
                raise ConfigError(f"STRANGER_RATE is {cfg.stranger_rate:g}, but model {r.version} has no stranger "
                                  "curve beside it: run python -m trainer calibrate-strangers, or unset STRANGER_RATE")
    conn = conn or connect_redis(cfg)
    stores = {r.version: GalleryStore(conn, r.version, r.dim, prefix=cfg.redis_key_prefix,
                                      stream_maxlen=cfg.change_stream_maxlen) for r in models}
    caches = {version: GalleryCache(store, cfg.gallery_snapshot_dir or None, cfg.gallery_snapshot_nprobe,
                                    None if cfg.score_norm == "off" else models[version].score_norm)
              for version, store in stores.items()}
    try:
        for cache in caches.values():
            cache.rebuild()
    except ServiceUnavailableError as exc:  # start anyway; /health says 503 until Redis is back
        log.error("Redis unreachable at start-up (%s); the gallery will load on the first request", exc.message)
    queue = Queue(cfg.enroll_queue, connection=conn, serializer=JOB_SERIALIZER)
    service = Service(config=cfg, models=models, redis=conn, stores=stores, caches=caches,
                      queue=queue, metrics=Metrics(conn, cfg.redis_key_prefix))
    app.extensions[EXTENSION] = service

    for warning in startup_warnings(cfg):
        log.warning("!" * 20 + " " + warning + " " + "!" * 20)
    for r in models:
        log.info("model %s (threshold %.4f) loaded, %d people indexed; Redis %s", r.version, r.threshold,
                 len(caches[r.version]), _safe_url(cfg.redis_url))

    if cfg.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=cfg.trusted_proxies, x_proto=cfg.trusted_proxies)  # type: ignore[method-assign]
    install_retry_after_floor(app)  # before the limiter: it must run after the limiter's headers
    install_limiter(app, cfg)
    install_inflight_cap(app, cfg)
    register_routes(app)
    _register_hooks(app, service)
    _register_error_handlers(app)
    return app


def register_routes(app: Flask) -> None:
    """Every route the service serves (the key-coverage test lists them from here, so a new
    route cannot ship without being checked for its key)."""
    app.register_blueprint(v1)
    app.register_blueprint(ops)
    app.register_blueprint(console)


def _safe_url(url: str) -> str:
    """The Redis URL without its password, for logs."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _register_hooks(app: Flask, service: Service) -> None:
    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()
        g.request_id = request.headers.get("X-Request-ID", "")[:64] or uuid.uuid4().hex
        _buffer_chunked_body(app.config["MAX_CONTENT_LENGTH"])

    @app.after_request
    def record(response):
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        service.metrics.observe(route, request.method, response.status_code, elapsed)
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response


def _buffer_chunked_body(limit: int) -> None:
    """Read a body sent without Content-Length (chunked) here, up to ``limit`` bytes: over it
    is a 413. Werkzeug would cut such a body at the limit without a word, and the cut JSON
    would then read as a 400 "not valid JSON"."""
    env = request.environ
    if request.content_length is not None or "chunked" not in env.get("HTTP_TRANSFER_ENCODING", "").lower():
        return
    stream, chunks, size = env["wsgi.input"], [], 0
    while size <= limit:
        chunk = stream.read(min(1 << 20, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise RequestEntityTooLarge()
    env["wsgi.input"] = io.BytesIO(b"".join(chunks))
    env["CONTENT_LENGTH"] = str(size)
    env.pop("HTTP_TRANSFER_ENCODING", None)
    env.pop("wsgi.input_terminated", None)


def _drain_body() -> None:
    """Read the unread body of a refused request (at most MAX_CONTENT_LENGTH, already bounded by
    Werkzeug): a connection closed with unread bytes is reset by the kernel, and the client (or
    nginx, as a 502) never sees the 429."""
    try:
        request.get_data(cache=False)
    except Exception:  # noqa: BLE001 - over the limit or a broken stream: nothing more to save
        pass


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(FaceServiceError)
    def service_error(exc: FaceServiceError):
        response = jsonify(exc.to_dict())
        response.status_code = exc.status_code
        if isinstance(exc, AuthError):
            response.headers["WWW-Authenticate"] = 'Bearer realm="facerec"'
        if exc.status_code >= 500:
            log.error("request %s failed: %s", g.get("request_id"), exc.message)
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = exc.code or 500
        message = exc.description or exc.name
        if code == 404:
            message = f"no such endpoint: {request.path}"
        elif code == 405:
            allowed = ", ".join(sorted(m for m in (exc.valid_methods or []) if m not in ("HEAD", "OPTIONS")))
            message = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
        elif code == 413:
            message = (f"the request body is over the limit of {app.config['MAX_CONTENT_LENGTH']} bytes "
                       "(MAX_CONTENT_LENGTH)")
        if code == 429:
            _drain_body()
        response = exc.get_response()
        response.data = jsonify({"error": HTTP_CODES.get(code, exc.name.lower().replace(" ", "_")),
                                 "message": message}).get_data()
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        if isinstance(exc, redis.RedisError):
            log.error("request %s: Redis error: %s", g.get("request_id"), exc)
            return service_error(ServiceUnavailableError(f"the gallery store (Redis) is unreachable: {exc}"))
        log.exception("request %s: unexpected error", g.get("request_id"))
        response = jsonify({"error": "internal", "message": f"internal error (request id {g.get('request_id')}); "
                                                             "see the server log"})
        response.status_code = 500
        return response
