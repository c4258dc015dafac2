"""Enrollment: turning uploaded photos into stored embeddings, in an RQ job or in-request.

Transport: the server parks each uploaded image in Redis under its own expiring key
(``UPLOAD_TTL``), with whose photo it is in the job's items (:meth:`GalleryStore.put_uploads`),
and the job carries only the upload keys (a delete can erase items and photos, never the job).
The job hash is read back whole on every status poll (``GET /jobs/<id>``) and kept for the
result TTL; 200 photos of 5 MB as arguments would make a 1 GB job hash. With keys, the job stays
a few kilobytes, each image is read once by the worker and deleted once processed.

Serialization: every job (arguments, meta, return value) is JSON (:data:`JOB_SERIALIZER`) on
both sides, never pickle: whoever can write to Redis must not be able to run code in the
server or a worker by forging an ``rq:job:<id>`` hash. Job arguments are plain data.

Policy for each image: :mod:`recognizer.enrollment`, the one the CLI applies too -- the
largest face is enrolled when it clearly dominates and ``faces_found`` says how many there
were; two faces of similar size are refused (``several_faces``); a face whose shorter side is
under ``MIN_ENROLL_FACE_SIZE`` is refused. The status reported per image:

* ``enrolled`` / ``duplicate`` -- stored, or the same bytes (sha256) were already stored
  for that person (the same photo never weighs twice);
* ``no_face``, ``too_small``, ``several_faces``, ``unreadable`` (not an image, truncated, over the limits);
* ``expired`` (the upload's TTL ran out before a worker got to it), ``person_deleted``,
  ``image_deleted`` (the person, or the stored photo, was deleted: the row names neither),
  ``error`` (an unexpected failure on this image; the rest of the job goes on).

Transient Redis failures are not caught: the job fails and RQ retries it
(``JOB_RETRIES``/``JOB_RETRY_INTERVALS``). A retry skips the images that an earlier attempt
already recorded, so it neither double-counts nor reports "duplicate" for its own work.
"""
from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import redis
from redis import Redis
from rq import Queue, Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from recognizer import Recognizer
from recognizer.enrollment import ENROLLED, EnrollmentResult, image_hash, inspect_for_enrollment
from recognizer.errors import FaceServiceError

from .config import ServiceConfig, load_config
from .crops import encode_frame
from .errors import JobNotFoundError, ModelVersionError, PersonNotFoundError
from .models import ModelSet, build_models, load_recognizer
from .store import GalleryStore

log = logging.getLogger(__name__)

ENROLL_FUNC = "service.jobs.enroll_job"
JOB_SERIALIZER = JSONSerializer  # never pickle: see the module docstring
STORED = ("enrolled", "duplicate")

# -- the models, once per process --------------------------------------------------------

_models: ModelSet | None = None
_models_lock = threading.Lock()


def build_recognizer(config: ServiceConfig) -> Recognizer:
    """Load ``MODEL_PATH`` with the service's limits (and torch's thread count set first)."""
    return load_recognizer(config.resolved_model_path(), config)


def set_recognizer(models: Recognizer | ModelSet | None) -> None:
    """Install this process's model(s) (``worker.py`` does it before the first job)."""
    global _models
    with _models_lock:
        _models = ModelSet(models) if isinstance(models, Recognizer) else models


def get_models() -> ModelSet:
    """This process's models, built from the environment on first use if nobody installed them."""
    global _models
    with _models_lock:
        if _models is None:
            _models = build_models(load_config())
        return _models


def get_recognizer() -> Recognizer:
    """This process's primary model (``MODEL_PATH``)."""
    return get_models().primary


# -- one image --------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrollmentPolicy:
    """What makes a photo acceptable as a reference; travels inside the job so that the
    worker applies exactly what the server's configuration promised."""

    min_enroll_face_size: int = 40
    keep_face_crops: bool = True

    @classmethod
    def from_config(cls, config: ServiceConfig) -> "EnrollmentPolicy":
        return cls(config.min_enroll_face_size, config.keep_face_crops)


def inspect_image(recognizer: Recognizer, store: GalleryStore, person_id: str, data: bytes,
                  policy: EnrollmentPolicy, *, filename: str | None = None, job_id: str | None = None,
                  job_item: int | None = None, pending: set[tuple[str, str]] | None = None,
                  known: Mapping[tuple[str, str], dict[str, Any] | None] | None = None,
                  ) -> tuple[dict[str, Any], EnrollmentResult | None]:
    """First half of enrolling one photo: the duplicate check and the policy. Returns the
    result dict so far and, for an accepted face, the outcome holding its aligned crop (to be
    embedded, possibly with other photos' crops, then stored by :func:`store_image`).
    ``pending`` holds the (person, image hash) pairs accepted but not stored yet; a photo
    already there is a duplicate too, and an accepted one is added. A photo that item
    ``job_item`` of job ``job_id`` itself stored (an attempt killed before recording it) is
    reported ``enrolled``. ``known`` holds what a caller already read of
    :meth:`GalleryStore.image_info` for some (person, hash) pairs (a job reads its chunk's at once)."""
    digest = image_hash(data)
    result: dict[str, Any] = {"person_id": person_id, "image_hash": digest}
    if filename:
        result["filename"] = filename[:255]
    key = (person_id, digest)
    if pending is not None and key in pending:
        return {**result, "status": "duplicate"}, None
    stored = known[key] if known is not None and key in known else store.image_info(person_id, digest)
    if stored is not None:  # cheap: skip the model for a re-upload
        own = job_id is not None and (stored.get("job_id"), stored.get("job_item")) == (job_id, job_item)
        return {**result, "status": "enrolled" if own else "duplicate"}, None
    outcome = inspect_for_enrollment(recognizer, data, min_face_size=policy.min_enroll_face_size)
    result.update(outcome.to_dict())
    result.pop("face", None)
    if outcome.face:
        result["box"] = outcome.face["box"]
    if outcome.status != ENROLLED:
        return result, None
    if pending is not None:
        pending.add(key)
    return result, outcome


def embed_outcomes(models: ModelSet, outcomes: Sequence[EnrollmentResult]) -> list[dict[str, Any]]:
    """Embed accepted faces with every model of the process, in one forward pass per model:
    ``[{version: embedding}]`` in the order of ``outcomes``. Each outcome keeps the primary
    model's embedding in ``.embedding`` and its canonical frame in ``.frame``."""
    if not outcomes:
        return []
    vectors = models.embed_frames(np.stack([o.frame for o in outcomes]))
    out = []
    for i, outcome in enumerate(outcomes):
        outcome.embedding, outcome.crop = vectors[models.primary.version][i], None
        out.append({version: v[i] for version, v in vectors.items()})
    return out


def store_image(store: GalleryStore, person_id: str, result: dict[str, Any], outcome: EnrollmentResult,
                *, job_id: str | None = None, job_item: int | None = None,
                embeddings: dict[str, Any] | None = None, keep_face_crop: bool = True) -> dict[str, Any]:
    """Second half: store the embedded face (every model's embedding in ``embeddings``, and its
    kept crop unless ``keep_face_crop`` is off); returns the final result dict."""
    if outcome.embedding is None and not embeddings:
        raise ValueError("store_image needs an embedded outcome (embed_outcomes first)")
    info = {"enrolled_at": round(time.time(), 3), "job_id": job_id, "job_item": job_item,
            "faces_found": outcome.faces_found,
            "box": result.get("box"), "probability": (outcome.face or {}).get("probability"),
            "filename": result.get("filename")}
    crop = encode_frame(outcome.frame) if keep_face_crop and outcome.frame is not None else None
    try:
        status, stored = store.add_image(person_id, outcome.image_hash, embeddings or outcome.embedding, info,
                                         crop=crop)
    except PersonNotFoundError:
        return {**result, "status": "person_deleted", "message": f"person {person_id!r} was deleted"}
    result = {**result, "status": status}
    if status == "duplicate":
        result.pop("message", None)
        if job_id is not None and (stored.get("job_id"), stored.get("job_item")) == (job_id, job_item):
            result["status"] = "enrolled"  # our own earlier attempt stored it (a retried job)
    return result


def enroll_image(models: ModelSet | Recognizer, store: GalleryStore, person_id: str, data: bytes,
                 policy: EnrollmentPolicy, *, job_id: str | None = None,
                 filename: str | None = None) -> dict[str, Any]:
    """Detect, check, embed (with every model held) and store one photo of ``person_id``;
    returns its result dict (``status`` is one of the statuses in the module docstring).
    Redis errors propagate."""
    models = ModelSet(models) if isinstance(models, Recognizer) else models
    result, outcome = inspect_image(models.primary, store, person_id, data, policy, filename=filename)
    if outcome is None:
        return result
    embeddings = embed_outcomes(models, [outcome])[0]
    return store_image(store, person_id, result, outcome, job_id=job_id, embeddings=embeddings,
                       keep_face_crop=policy.keep_face_crops)


# -- the RQ job -------------------------------------------------------------------------

DEFAULT_EMBED_BATCH = 16  # faces per forward pass in a job (ENROLL_EMBED_BATCH)


def _inspect_item(recognizer: Recognizer, store: GalleryStore, item: dict[str, Any], policy: EnrollmentPolicy,
                  job_id: str, index: int, info: dict[str, Any] | None, data: bytes | None,
                  pending: set[tuple[str, str]], known: Mapping[tuple[str, str], dict[str, Any] | None],
                  ) -> tuple[dict[str, Any], EnrollmentResult | None]:
    """One job item up to its embedding, from its ``info`` and uploaded ``data`` as read with
    the chunk; every failure but Redis's becomes that image's result."""
    if info is None and "person_id" in item:  # a job enqueued before items lived apart from it
        info = {"person_id": item["person_id"], **({"filename": item["filename"]} if item.get("filename") else {})}
    if info is not None and "person_id" not in info:  # a tombstone: the person was deleted
        return {"status": info.get("status", "person_deleted"), "message": "the person was deleted"}, None
    if info is not None and info.get("status") == "image_deleted":
        return {"person_id": info["person_id"], "status": "image_deleted", "message": "the photo was deleted"}, None
    if data is None or info is None:
        result = {"status": "expired", "message": "the uploaded image expired before a worker processed it"}
        for name in ("person_id", "filename"):
            if info and info.get(name):
                result[name] = info[name]
        return result, None
    person_id = info["person_id"]
    try:
        return inspect_image(recognizer, store, person_id, data, policy, filename=info.get("filename"),
                             job_id=job_id, job_item=index, pending=pending, known=known)
    except FaceServiceError as exc:
        return {"person_id": person_id, "status": "error", "message": exc.message}, None
    except redis.RedisError:
        raise  # transient: let RQ retry the job
    except Exception as exc:  # noqa: BLE001 - one bad image must not sink the batch
        log.exception("job %s: image %d failed", job_id, index)
        return {"person_id": person_id, "status": "error", "message": f"{type(exc).__name__}: {exc}"}, None


def _read_chunk(store: GalleryStore, job_id: str, items: Sequence[dict[str, Any]], chunk: Sequence[int],
                ) -> tuple[list[tuple[dict[str, Any] | None, bytes | None]], dict[tuple[str, str], dict[str, Any] | None]]:
    """A chunk's items, uploads and stored-photo records in two round trips instead of three
    per image: ``[(info, data)]`` and ``{(person, hash): image_info}`` for the duplicate check,
    keyed by the hash the server recorded with each item (an item without one is looked up later)."""
    fetched = store.job_chunk(job_id, chunk, [items[i]["upload"] for i in chunk])
    pairs = list({(info["person_id"], info["image_hash"]): None for info, data in fetched
                  if data is not None and info is not None
                  and isinstance(info.get("person_id"), str) and isinstance(info.get("image_hash"), str)})
    return fetched, dict(zip(pairs, store.images_info(pairs)))


def enroll_job(spec: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point: enroll every uploaded image of ``spec`` (see :func:`enqueue_enrollment`).

    Images go through in chunks of ``embed_batch``: each is decoded, detected and checked,
    then the chunk's accepted faces are embedded in one forward pass (about twice the faces/s
    of one at a time on CPU) and stored. After each chunk, progress goes to
    ``job.meta["progress"]`` ({done, total}) and each image's result is appended to a Redis
    list, so ``GET /jobs/<id>`` shows partial results and a retry skips finished images
    (a worker killed mid-chunk redoes at most that chunk).
    """
    job = get_current_job()
    if job is None:
        raise RuntimeError("enroll_job must run inside an RQ worker")
    models = get_models()
    recognizer = models.primary
    kept = {v.decode() for v in job.connection.smembers(f"{spec['prefix']}:model_versions")}
    if kept and not kept & set(models.versions):
        job.retries_left = 0  # not transient: retrying cannot help
        raise ModelVersionError(
            f"this worker runs model(s) {', '.join(models.versions)} but the gallery keeps model(s) "
            f"{', '.join(sorted(kept))} (the job was submitted by a server running {spec['model_version']}); "
            "run workers with MODEL_PATH (or NEXT_MODEL_PATH) set to one of those")
    store = GalleryStore(job.connection, recognizer.version, recognizer.dim, prefix=spec["prefix"],
                         stream_maxlen=spec.get("stream_maxlen", 100_000))
    policy = EnrollmentPolicy(**spec["policy"])
    ttl = int(spec["result_ttl"])
    items: list[dict[str, Any]] = spec["items"]
    done = {int(r["index"]): r for r in store.job_results(job.id)}
    total = len(items)
    todo = [i for i in range(total) if i not in done]
    batch = max(1, int(spec.get("embed_batch", DEFAULT_EMBED_BATCH)))
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        pending: set[tuple[str, str]] = set()  # the same photo twice in a chunk is stored once
        fetched, known = _read_chunk(store, job.id, items, chunk)
        checked = [_inspect_item(recognizer, store, items[i], policy, job.id, i, info, data, pending, known)
                   for i, (info, data) in zip(chunk, fetched)]
        outcomes = [outcome for _, outcome in checked if outcome is not None]
        try:
            vectors = iter(embed_outcomes(models, outcomes))  # one forward pass per model for the chunk
        except Exception as exc:  # noqa: BLE001 - the chunk's images fail, the job goes on
            log.exception("job %s: embedding images %s failed", job.id, chunk)
            vectors = iter(())
            checked = [(r if o is None else {**r, "status": "error", "message": f"{type(exc).__name__}: {exc}"}, None)
                       for r, o in checked]
        rows = []
        for index, (result, outcome) in zip(chunk, checked):
            if outcome is not None:
                result = store_image(store, result["person_id"], result, outcome, job_id=job.id, job_item=index,
                                     embeddings=next(vectors), keep_face_crop=policy.keep_face_crops)
            rows.append({**result, "index": index})
        # Rows are written only after every photo of the chunk is stored, uploads dropped after both.
        written = store.append_job_results(job.id, rows, ttl, drop_uploads=[items[i]["upload"] for i in chunk])
        done.update(zip(chunk, written))
        job.meta["progress"] = {"done": len(done), "total": total}
        job.save_meta()
    store.drop_job_items(job.id)
    # The rows stay in Redis only (the job view reads them there), where a delete can redact them.
    return {"summary": dict(Counter(r["status"] for r in done.values())), "total": total,
            "model_version": recognizer.version}


def enqueue_enrollment(queue: Queue, store: GalleryStore, config: ServiceConfig,
                       batches: Sequence[tuple[str, Sequence[tuple[str | None, bytes]]]]) -> Job:
    """Park the images in Redis and enqueue one job for ``[(person_id, [(filename, bytes)])]``."""
    job_id = uuid.uuid4().hex
    parked = [(pid, {"image_hash": image_hash(data), **({"filename": name[:255]} if name else {})}, data)
              for pid, images in batches for name, data in images]
    keys = store.put_uploads(job_id, parked, ttl=config.upload_ttl, keep=max(config.upload_ttl, config.result_ttl))
    items = [{"upload": key} for key in keys]
    spec = {
        "model_version": store.model_version,
        "prefix": store.prefix,
        "stream_maxlen": store.stream_maxlen,
        "policy": asdict(EnrollmentPolicy.from_config(config)),
        "result_ttl": config.result_ttl,
        "embed_batch": config.enroll_embed_batch,
        "items": items,
    }
    retry = None
    if config.job_retries > 0:
        retry = Retry(max=config.job_retries, interval=list(config.job_retry_intervals) or 0)
    return queue.enqueue_call(
        ENROLL_FUNC, kwargs={"spec": spec}, job_id=job_id, timeout=config.job_timeout,
        result_ttl=config.result_ttl, failure_ttl=config.failure_ttl, retry=retry,
        description=f"enroll {len(items)} image(s) of {len(batches)} person(s)",
        meta={"kind": "enroll", "progress": {"done": 0, "total": len(items)}},
    )


_JOB_ID = re.compile(r"[A-Za-z0-9-]{1,64}")  # ASCII only: str.isalnum() accepts "ä"


def job_view(connection: Redis, store: GalleryStore, job_id: str) -> dict[str, Any]:
    """What ``GET /jobs/<id>`` shows: status, progress and per-image results (so far).
    A job hash that does not decode as one of ours (forged, or written by another
    serializer) is answered like an unknown job, and never unpickled."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise JobNotFoundError(f"no job with id {job_id!r}", job_id=str(job_id)[:64])
    try:
        return _read_job(connection, store, job_id)
    except (NoSuchJobError, JobNotFoundError):
        pass
    except redis.RedisError:
        raise
    except Exception as exc:  # noqa: BLE001
        log.warning("job %s: stored job data is not ours, not decoded (%s)", job_id, type(exc).__name__)
    raise JobNotFoundError(f"no job with id {job_id!r} (unknown, or its result expired)", job_id=job_id)


def _read_job(connection: Redis, store: GalleryStore, job_id: str) -> dict[str, Any]:
    job = Job.fetch(job_id, connection=connection, serializer=JOB_SERIALIZER)
    if job.func_name != ENROLL_FUNC:
        raise NoSuchJobError(job_id)
    status = job.get_status(refresh=False)
    meta = job.meta or {}
    body: dict[str, Any] = {
        "job_id": job.id,
        "status": str(status.value if isinstance(status, JobStatus) else status),
        "progress": meta.get("progress", {}),
        "description": job.description,
        "enqueued_at": _iso(job.enqueued_at),
        "started_at": _iso(job.started_at),
        "ended_at": _iso(job.ended_at),
        "retries_left": job.retries_left,
    }
    results = store.job_results(job.id)
    results.sort(key=lambda r: r.get("index", 0))
    body["results"] = results
    body["summary"] = dict(Counter(r["status"] for r in results))
    if status == JobStatus.FAILED:
        body["error"] = _last_line(job.exc_info)
    return body


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _last_line(text: str | None) -> str | None:
    """The exception line of a traceback: enough for an operator, no internals."""
    if not text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else None
