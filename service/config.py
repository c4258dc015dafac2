"""Service settings: environment variables, overridable by a dict (tests, ``create_app``).

Every setting has one name, used both as the environment variable and as the key of the
override dict, so what the docs, docker-compose and the tests say is the same thing.
Values are parsed and range-checked once, at start-up, so a typo fails the deployment
instead of the first request.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from recognizer.artifact import HOW_TO_MAKE_A_MODEL, SHIPPED_MODEL
from recognizer.errors import ModelArtifactError

from .errors import ConfigError


@dataclass(frozen=True)
class ServiceConfig:
    """All settings of the server and the worker (names = environment variables, lower-cased)."""

    redis_url: str = "redis://localhost:6379/0"
    model_path: str = ""  # empty: the shipped release model, models/facerec.pt
    next_model_path: str = ""  # during an upgrade: a second model, loaded beside MODEL_PATH (docs/SERVICE.md)
    keep_face_crops: bool = True  # keep each enrolled face's aligned crop, so a new model can re-embed it
    admin_api_keys: tuple[str, ...] = ()  # enroll, create, delete (and everything read keys allow)
    read_api_keys: tuple[str, ...] = ()  # identify, verify, list, jobs
    redis_key_prefix: str = "fr"
    enroll_queue: str = "enroll"
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 25_000_000  # a 25 MP RGB decode is 75 MB; bombs are refused before decoding
    max_images_per_request: int = 100
    max_content_length: int = 64 * 1024 * 1024  # whole request body (base64 in JSON is 4/3 larger)
    min_face_size: int = 20  # detector: smaller faces are not even looked for
    detect_max_side: int = 1600  # larger photos are searched for faces on a copy this size (0: full size)
    min_detection_probability: float = 0.9
    # "onnx": embedding network + MTCNN's R/O-Nets under ONNX Runtime; "onnx-int8": the same with the
    # embedding network in int8, from the parameters beside the model (recognizer/int8.py)
    inference_backend: str = "torch"
    # AS-norm (index/cohort.py): "opt_in" lets a request ask for it (score_norm=on), "default" uses
    # it unless a request says off, "off" never. It needs the model's calibration file and a gallery
    # of at least its cohort size (400 people). Opt-in because the registered test failed with a
    # cohort from another source than the probes (docs/BENCHMARKS.md).
    score_norm: str = "opt_in"
    # Identify's default threshold from the gallery's size: the cosine at which a stranger matches
    # anyone enrolled with at most this probability (recognizer/stranger.py; never below the
    # model's threshold). 0: off, the model's threshold whatever the size. At the model's threshold
    # 7% of strangers match someone among 50 people and 35% among 450 (docs/BENCHMARKS.md); the
    # price is enrolled people turned away. Needs the model's stranger curve beside it.
    stranger_rate: float = 0.0
    min_enroll_face_size: int = 40  # enrollment: a reference face's shorter side must reach this
    enroll_embed_batch: int = 16  # faces per forward pass in an enrollment job (2x faster than 1 on CPU)
    default_k: int = 5
    max_k: int = 100
    torch_threads: int = 1  # per process; several processes x several threads thrash the cores
    upload_ttl: int = 24 * 3600  # uploaded images wait this long for a worker
    result_ttl: int = 24 * 3600  # finished job results stay readable this long
    failure_ttl: int = 7 * 24 * 3600
    job_timeout: int = 3600
    job_heartbeat: int = 10  # a running job's heartbeat (s); a dead worker's job is retried after 3 missed
    job_retries: int = 3  # transient (Redis) failures
    # The first retry at once: a job whose worker died is requeued by the registry cleanup, and a
    # delayed retry would wait for RQ's scheduler, whose lock a dead worker holds for up to 61 s.
    job_retry_intervals: tuple[int, ...] = (0, 30, 120)
    change_stream_maxlen: int = 100_000
    # A host's gallery snapshot (`python -m service.snapshot`), mapped by every process instead of
    # each reading all people from Redis; empty: off (right below ~100k people, where exact is cheap).
    gallery_snapshot_dir: str = ""
    # Inverted lists each search of the snapshot scans. At 1M people 64 gives recall@1 0.998 in
    # 2.2-2.9 ms a query; on an AVX2-only CPU 48 gives 0.996 in 1.9 ms (docs/BENCHMARKS.md).
    gallery_snapshot_nprobe: int = 64
    redis_socket_timeout: float = 5.0
    rate_limit: str = "600/minute;60/second"  # per API key (else per address), all routes; "off"
    max_inflight: int = 2  # model requests (identify, verify, add a photo) at once per process; more get 429
    max_inflight_per_client: int = 1  # ... of them from one key (or address) per process
    trusted_proxies: int = 0  # reverse proxies in front (X-Forwarded-For hops to trust for the client address)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # unknown keys, passed to Flask

    @property
    def open_mode(self) -> bool:
        """True when no API key at all is configured: every endpoint is open."""
        return not self.admin_api_keys and not self.read_api_keys

    def resolved_next_model_path(self) -> Path | None:
        """The upgrade's second model, if one is set; ModelArtifactError if the file is missing."""
        if not self.next_model_path:
            return None
        path = Path(self.next_model_path)
        if not path.is_file():
            raise ModelArtifactError(f"NEXT_MODEL_PATH={self.next_model_path} does not exist")
        return path

    def resolved_model_path(self) -> Path:
        """MODEL_PATH, else the shipped release model; raises ModelArtifactError with
        instructions when the file is missing."""
        path = Path(self.model_path) if self.model_path else SHIPPED_MODEL
        if not path.is_file():
            raise ModelArtifactError(f"model file not found: {path}. {HOW_TO_MAKE_A_MODEL}")
        return path


_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_FIELDS = {f.name: f for f in dataclasses.fields(ServiceConfig) if f.name != "extra"}
# Singular spellings people reach for first.
_ALIASES = {"ADMIN_API_KEY": "ADMIN_API_KEYS", "READ_API_KEY": "READ_API_KEYS"}


def load_config(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Settings from ``environ`` (default ``os.environ``), then ``overrides`` on top.

    Keys are the upper-case field names (``REDIS_URL``, ``MAX_IMAGE_BYTES`` ...). Unknown
    override keys are kept in ``extra`` and handed to Flask's config untouched.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, raw in env.items():
        key = _ALIASES.get(key, key)
        name = key.lower()
        if key.isupper() and name in _FIELDS and raw != "":
            values[name] = raw
    for key, raw in (overrides or {}).items():
        key = _ALIASES.get(key, key)
        name = key.lower()
        if name in _FIELDS:
            values[name] = raw
        else:
            extra[key] = raw
    parsed = {name: _parse(name, raw) for name, raw in values.items()}
    config = ServiceConfig(**parsed, extra=extra)
    _check(config)
    return config


def _parse(name: str, raw: Any) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            text = str(raw).strip().lower()
            if text not in _BOOLS:
                raise ValueError(raw)
            return _BOOLS[text]
        if kind.startswith("tuple"):
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            items = [str(i).strip() for i in items if str(i).strip()]
            return tuple(int(i) for i in items) if "int" in kind else tuple(items)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name.upper()}={raw!r} is not a valid {kind}") from None


def _check(c: ServiceConfig) -> None:
    positive = ["max_image_bytes", "max_image_pixels", "max_images_per_request", "max_content_length",
                "min_face_size", "enroll_embed_batch", "default_k", "max_k", "torch_threads", "upload_ttl", "result_ttl",
                "failure_ttl", "job_timeout", "job_heartbeat", "change_stream_maxlen", "max_inflight",
                "max_inflight_per_client", "gallery_snapshot_nprobe"]
    for name in positive:
        if getattr(c, name) <= 0:
            raise ConfigError(f"setting {name.upper()} must be positive, got {getattr(c, name)}")
    if c.detect_max_side < 0 or 0 < c.detect_max_side < 4 * c.min_face_size:
        raise ConfigError(f"DETECT_MAX_SIDE must be 0 (off) or at least 4 x MIN_FACE_SIZE, got {c.detect_max_side}")
    if c.inference_backend not in ("torch", "onnx", "onnx-int8"):
        raise ConfigError(f"INFERENCE_BACKEND must be 'torch', 'onnx' or 'onnx-int8', got {c.inference_backend!r}")
    if c.score_norm not in ("opt_in", "default", "off"):
        raise ConfigError(f"SCORE_NORM must be 'opt_in', 'default' or 'off', got {c.score_norm!r}")
    if not 0.0 <= c.stranger_rate < 1.0:
        raise ConfigError(f"STRANGER_RATE must be in [0, 1) (0: off), got {c.stranger_rate}")
    if not 0.0 <= c.min_detection_probability <= 1.0:
        raise ConfigError("MIN_DETECTION_PROBABILITY must be in [0, 1]")
    if not 1 <= c.default_k <= c.max_k:
        raise ConfigError("DEFAULT_K must be between 1 and MAX_K")
    if c.job_retries < 0 or any(i < 0 for i in c.job_retry_intervals):
        raise ConfigError("JOB_RETRIES and JOB_RETRY_INTERVALS must not be negative")
    if c.trusted_proxies < 0:
        raise ConfigError("TRUSTED_PROXIES must not be negative")
    if c.rate_limit and c.rate_limit.lower() != "off":
        from limits import parse_many

        try:
            parse_many(c.rate_limit)
        except ValueError:
            raise ConfigError(f"RATE_LIMIT={c.rate_limit!r} is not a rate such as '600/minute;60/second'") from None
    if not c.redis_key_prefix or ":" in c.redis_key_prefix or " " in c.redis_key_prefix:
        raise ConfigError("REDIS_KEY_PREFIX must be a non-empty word without ':' or spaces")
    if set(c.admin_api_keys) & set(c.read_api_keys):
        raise ConfigError("a key cannot be both an admin and a read key")
