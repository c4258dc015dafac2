"""HTTP endpoints: ``/v1`` (identify, verify, people, enroll, jobs) and the operational
routes (``/health``, ``/metrics``, ``/openapi.json``).

Views validate everything before they write anything, so a rejected request leaves the
gallery as it was. Every write is followed by a cache sync *before* the response, so the
process that acknowledged a change also answers according to it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from flask import Blueprint, Response, jsonify, request, url_for

from index import Match, cosine_to_angle_deg, decide
from recognizer.detector import DetectedFace
from recognizer.errors import BadImageError, ConflictError, InvalidRequestError, NoFaceError

from .auth import may_read, require
from .context import Service, current_service
from .errors import EnrollmentRejectedError, PersonNotFoundError, ServiceUnavailableError
from .inputs import RequestBody, Upload, float_param, int_param, json_object_param, str_param
from .jobs import EnrollmentPolicy, enqueue_enrollment, enroll_image, job_view
from .limits import limit_inflight
from .metrics import CONTENT_TYPE
from .openapi import build_openapi
from .store import check_metadata, check_name
from .versions import read_state

v1 = Blueprint("v1", __name__, url_prefix="/v1")
ops = Blueprint("ops", __name__)

MAX_PAGE = 1000


#: The largest per-request ``min_face_size`` (pixels); larger values find nothing useful.
MAX_MIN_FACE_SIZE = 4096


# -- helpers -----------------------------------------------------------------------------


def face_json(face: DetectedFace) -> dict[str, Any]:
    body = face.to_dict()
    body["size"] = round(face.size, 1)
    return body


def match_json(m: Match) -> dict[str, Any]:
    body = {"person_id": m.person_id, "name": m.name, "cosine": round(m.cosine, 6), "angle_deg": round(m.angle_deg, 3)}
    if m.score is not None:
        body["score"] = round(m.score, 4)
    return body


def threshold_of(svc: Service, body: RequestBody) -> tuple[float, str]:
    value = body.get("threshold")
    thr = float_param(value, "threshold", svc.recognizer.threshold, -1.0, 1.0)
    return thr, ("model" if value in (None, "") else "request")


def stranger_rule(svc: Service) -> dict[str, Any] | None:
    """Identify's default threshold under STRANGER_RATE, for the gallery as this process holds it
    now: the cosine at which a stranger matches anyone enrolled with at most that probability,
    never below the model's threshold. None when the server has no such rule."""
    curve, rate = svc.recognizer.strangers, svc.config.stranger_rate
    if rate <= 0 or curve is None:
        return None
    people = len(svc.cache)
    return {"target": rate, "people": people, "within_curve": curve.resolves(rate, people),
            "threshold": max(svc.recognizer.threshold, curve.threshold_for(rate, people))}


def strangers_json(svc: Service) -> dict[str, Any]:
    """What a stranger meets at this gallery size: the chance of matching someone at the
    model's threshold and at the threshold identify uses by default."""
    curve, people = svc.recognizer.strangers, len(svc.cache)
    if curve is None:
        return {"curve": False, "stranger_rate": svc.config.stranger_rate}
    rule = stranger_rule(svc)
    threshold = rule["threshold"] if rule else svc.recognizer.threshold
    return {"curve": True, "stranger_rate": svc.config.stranger_rate, "people": people,
            **({"within_curve": rule["within_curve"]} if rule else {}), "default_threshold": round(threshold, 6),
            "expected_stranger_rate": round(curve.stranger_rate(threshold, people), 6),
            "expected_at_model_threshold": round(curve.stranger_rate(svc.recognizer.threshold, people), 6)}


SCORE_NORM_CHOICES = ("on", "off")


def wants_score_norm(svc: Service, body: RequestBody, threshold_source: str) -> tuple[bool, str | None]:
    """(use AS-norm?, why not, when the request asked for it). The request's ``score_norm`` (``on``
    or ``off``) defaults to the server's SCORE_NORM (``off`` unless it is ``default``). A request
    threshold is a cosine, so it cannot go with ``on``. Whether the gallery has a cohort yet is
    for the cache to say."""
    default = "on" if svc.config.score_norm == "default" else "off"
    choice = str_param(body.get("score_norm"), "score_norm") or default
    if choice not in SCORE_NORM_CHOICES:
        raise InvalidRequestError(f"score_norm must be one of {', '.join(SCORE_NORM_CHOICES)}, got {choice!r}",
                                  field="score_norm")
    if choice == "off":
        return False, None
    if threshold_source == "request":
        if body.get("score_norm") in (None, ""):
            return False, None  # the server's default gives way to a cosine threshold sent by the client
        raise InvalidRequestError("threshold is a cosine threshold: send it with score_norm off, or leave it out",
                                  field="threshold")
    if svc.config.score_norm == "off":
        return False, "score normalisation is off on this server (SCORE_NORM=off)"
    if svc.recognizer.score_norm is None:
        return False, f"model {svc.recognizer.version} has no score-norm calibration beside it"
    return True, None


def rule_json(svc: Service, normed: bool, asked: bool, why_not: str | None) -> dict[str, Any]:
    """How the decision was made (on the cosine, or on the AS-norm score and its threshold), and
    why not on the score when the request asked for it."""
    if normed:
        return {"rule": "as_norm", "score_threshold": round(svc.recognizer.score_norm.threshold, 4)}
    body: dict[str, Any] = {"rule": "cosine"}
    if asked or why_not:
        status = svc.cache.cohort_status()
        body["score_norm_unused"] = why_not or (f"the gallery has {status.get('people', 0)} people with vectors; "
                                                f"the cohort needs {status.get('cohort_size')}")
    return body


def largest_face(svc: Service, upload: Upload) -> tuple[np.ndarray, DetectedFace, int]:
    """Embedding of the largest face of an image, its face and how many faces there were."""
    pixels = svc.recognizer.load(upload.data)
    faces = svc.recognizer.detector.detect(pixels)
    if not faces:
        raise NoFaceError(f"no face found in {upload.field!r}", field=upload.field)
    embedding = svc.recognizer.embed(svc.recognizer.align(pixels, faces[:1]))[0]
    return embedding, faces[0], len(faces)


# -- identify / verify -------------------------------------------------------------------


@v1.post("/identify")
@require("read")
@limit_inflight
def identify() -> Any:
    svc = current_service()
    body = RequestBody(request, svc.config)
    k = int_param(body.get("k"), "k", svc.config.default_k, 1, svc.config.max_k)
    threshold, source = threshold_of(svc, body)
    # A checkpoint camera sees faces of 80 px and more: not looking for smaller ones halves detection.
    min_face_size = int_param(body.get("min_face_size"), "min_face_size", svc.config.min_face_size,
                              svc.config.min_face_size, MAX_MIN_FACE_SIZE)
    norm, why_not = wants_score_norm(svc, body, source)
    upload = body.image("image")
    found = svc.recognizer.analyze(upload.data, min_face_size)
    # The freshness check happens here, after the slow part, right before answering.
    candidates = svc.cache.search(np.stack([f.embedding for f in found]), k, score_norm=norm) if found else []
    rule = stranger_rule(svc) if source == "model" else None  # after the search's sync: the size it searched
    if rule is not None:
        threshold, source = rule["threshold"], "stranger_rate"
    # AS-norm only where the gallery has its cohort: every match then carries a score
    normed = norm and any(m.score is not None for row in candidates for m in row)
    faces = []
    for item, matches in zip(found, candidates):
        if normed and matches:
            decision = "match" if matches[0].score >= svc.recognizer.score_norm.threshold else "unknown"
        else:
            decision = decide(matches, threshold)
        faces.append({
            **face_json(item.face),
            "decision": decision,
            "person": match_json(matches[0]) if decision == "match" else None,
            "matches": [match_json(m) for m in matches],
        })
    return {"model_version": svc.recognizer.version, "threshold": threshold, "threshold_source": source,
            **({"stranger_rate": {key: rule[key] for key in ("target", "people", "within_curve")}} if rule else {}),
            **rule_json(svc, normed, norm and bool(found), why_not), "k": k, "min_face_size": min_face_size, "faces": faces}


@v1.post("/verify")
@require("read")
@limit_inflight
def verify() -> Any:
    svc = current_service()
    body = RequestBody(request, svc.config)
    threshold, source = threshold_of(svc, body)
    norm, why_not = wants_score_norm(svc, body, source)
    person_id = str_param(body.get("person_id"), "person_id") or None
    first = body.image("image")
    second = body.image("image2", required=False)
    if (second is None) == (person_id is None):
        raise InvalidRequestError("send either 'image2' (a second photo) or 'person_id' (an enrolled person), "
                                  "exactly one of them", field="image2")
    person = svc.store.get_person(person_id) if person_id else None  # 404 before any inference
    emb_a, face_a, n_a = largest_face(svc, first)
    result: dict[str, Any] = {"faces": {"image": {**face_json(face_a), "faces_found": n_a}}}
    if second is not None:
        emb_b, face_b, n_b = largest_face(svc, second)
        result["faces"]["image2"] = {**face_json(face_b), "faces_found": n_b}
    else:
        emb_b = svc.cache.person_vector(person_id)
        if emb_b is None:
            if not svc.store.exists(person_id):
                raise PersonNotFoundError(f"no person with id {person_id!r}", person_id=person_id)
            raise ConflictError(f"person {person_id!r} has no enrolled images for model {svc.recognizer.version}",
                                person_id=person_id)
        result["person"] = {"person_id": person.person_id, "name": person.name}
    cosine = float(np.clip(np.dot(emb_a.astype(np.float64), emb_b.astype(np.float64)), -1.0, 1.0))
    score = svc.cache.pair_score(emb_a, emb_b, cosine, person_id) if norm else None
    same = cosine >= threshold if score is None else score >= svc.recognizer.score_norm.threshold
    result.update({"same": same, "cosine": round(cosine, 6),
                   "angle_deg": round(cosine_to_angle_deg(cosine), 3), "threshold": threshold,
                   "threshold_source": source, **rule_json(svc, score is not None, norm, why_not),
                   "model_version": svc.recognizer.version})
    if score is not None:
        result["score"] = round(score, 4)
    return result


# -- people ------------------------------------------------------------------------------


def _location(person_id: str) -> str:
    return url_for("v1.get_person", person_id=person_id)


@v1.post("/people")
@require("admin")
def create_person() -> Any:
    svc = current_service()
    body = RequestBody(request, svc.config, allow_form_urlencoded=True)
    person_id = body.get("person_id")
    person = svc.store.create_person(
        body.get("name"),
        json_object_param(body.get("metadata"), "metadata"),
        None if person_id in (None, "") else person_id,
    )
    response = jsonify(person.to_dict())
    response.status_code = 201
    response.headers["Location"] = _location(person.person_id)
    return response


@v1.get("/people")
@require("read")
def list_people() -> Any:
    svc = current_service()
    offset = int_param(request.args.get("offset"), "offset", 0, 0, 2**31)
    limit = int_param(request.args.get("limit"), "limit", 100, 1, MAX_PAGE)
    total, people = svc.store.list_people(offset, limit)
    return {"total": total, "offset": offset, "limit": limit, "model_version": svc.recognizer.version,
            "people": [p.to_dict() for p in people]}


@v1.get("/people/<person_id>")
@require("read")
def get_person(person_id: str) -> Any:
    svc = current_service()
    person = svc.store.get_person(person_id)
    return {**person.to_dict(), "model_version": svc.recognizer.version,
            "images": svc.store.person_images(person_id)}


@v1.delete("/people/<person_id>")
@require("admin")
def delete_person(person_id: str) -> Any:
    svc = current_service()
    svc.store.delete_person(person_id)
    svc.cache.sync()  # this process stops matching them before we say it is done
    return {"deleted": True, "person_id": person_id}


@v1.post("/people/<person_id>/images")
@require("admin")
@limit_inflight
def add_image(person_id: str) -> Any:
    """Synchronous single-photo enrollment: the operator at the desk learns at once whether
    the photo was usable (422 no_face / too_small), with the policy the bulk job applies."""
    svc = current_service()
    body = RequestBody(request, svc.config)
    upload = body.image("image")
    svc.store.get_person(person_id)
    result = enroll_image(svc.models, svc.store, person_id, upload.data,
                          EnrollmentPolicy.from_config(svc.config), filename=upload.filename)
    status = result["status"]
    details = {k: v for k, v in result.items() if k in ("faces_found", "image_hash", "box")}
    if status == "unreadable":
        raise BadImageError(result["message"], field="image")
    if status == "no_face":
        raise NoFaceError("no face found in 'image'", field="image")
    if status == "person_deleted":
        raise PersonNotFoundError(result["message"], person_id=person_id)
    if status not in ("enrolled", "duplicate"):
        raise EnrollmentRejectedError(result.get("message", status), code=status, **details)
    svc.cache.sync()
    result["person"] = svc.store.get_person(person_id).to_dict()
    return result, (201 if status == "enrolled" else 200)


@v1.delete("/people/<person_id>/images/<image_hash>")
@require("admin")
def delete_image(person_id: str, image_hash: str) -> Any:
    svc = current_service()
    svc.store.remove_image(person_id, image_hash)
    svc.cache.sync()
    return {"deleted": True, "person_id": person_id, "image_hash": image_hash,
            "person": svc.store.get_person(person_id).to_dict()}


# -- enrollment jobs ---------------------------------------------------------------------


@dataclass
class _Entry:
    person_id: str | None
    name: str | None
    metadata: dict[str, Any] | None
    images: list[Upload] = field(default_factory=list)


def _entry(source: dict[str, Any], images: list[Upload], where: str) -> _Entry:
    person_id = source.get("person_id") or None
    name = source.get("name") or None
    if person_id is not None and name is not None:
        raise InvalidRequestError(f"{where}: give person_id (an existing person) or name (a new person), not both",
                                  field=where)
    if person_id is None and name is None:
        raise InvalidRequestError(f"{where}: person_id (an existing person) or name (a new person) is required",
                                  field=where)
    if person_id is not None and not isinstance(person_id, str):
        raise InvalidRequestError(f"{where}: person_id must be a string", field=where)
    metadata = json_object_param(source.get("metadata"), f"{where}.metadata" if where != "request" else "metadata")
    if person_id is not None and metadata is not None:
        raise InvalidRequestError(f"{where}: metadata can only be given with a new person (name)", field=where)
    return _Entry(person_id, name, metadata, images)


@v1.post("/enroll")
@require("admin")
def enroll() -> Any:
    svc = current_service()
    body = RequestBody(request, svc.config)
    if body.kind == "form":
        entries = [_entry(body.params, body.images("images"), "request")]
    else:
        people = body.get("people")
        if people is None and "images" in body.params:
            people = [body.params]  # one person at the top level
        if not isinstance(people, list) or not people:
            raise InvalidRequestError("people must be a non-empty list of {name | person_id, images}",
                                      field="people")
        if sum(len(p["images"]) if isinstance(p, dict) and isinstance(p.get("images"), list) else 0
               for p in people) > svc.config.max_images_per_request:  # a non-list is refused per person below
            raise InvalidRequestError(f"at most {svc.config.max_images_per_request} images per request",
                                      field="people")
        entries = []
        for i, p in enumerate(people):
            if not isinstance(p, dict):
                raise InvalidRequestError(f"people[{i}] must be an object", field=f"people[{i}]")
            images = body.images("images", source=p, where=f"people[{i}].images")
            entries.append(_entry(p, images, f"people[{i}]"))
    total = sum(len(e.images) for e in entries)
    if total > svc.config.max_images_per_request:
        raise InvalidRequestError(f"{total} images; at most {svc.config.max_images_per_request} per request",
                                  field="images")
    # Validate every reference before the first write: a bad entry must not leave half a batch.
    for e in entries:
        if e.person_id is not None:
            e.name = svc.store.get_person(e.person_id).name  # answered with the rest, not null
        else:
            e.name = check_name(e.name)
            check_metadata(e.metadata)
    people_out = []
    for e in entries:
        created = e.person_id is None
        if created:
            e.person_id = svc.store.create_person(e.name, e.metadata).person_id
        people_out.append({"person_id": e.person_id, "name": e.name, "created": created, "images": len(e.images)})
    job = enqueue_enrollment(svc.queue, svc.store, svc.config,
                             [(e.person_id, [(u.filename, u.data) for u in e.images]) for e in entries])
    location = url_for("v1.get_job", job_id=job.id)
    response = jsonify({"job_id": job.id, "status": "queued", "status_url": location, "total_images": total,
                        "people": people_out})
    response.status_code = 202
    response.headers["Location"] = location
    return response


@v1.get("/jobs/<job_id>")
@require("read")
def get_job(job_id: str) -> Any:
    svc = current_service()
    return job_view(svc.redis, svc.store, job_id)


# -- operations --------------------------------------------------------------------------


@ops.get("/health")
def health() -> Any:
    """200 when this process can serve (Redis reachable), 503 otherwise: a load balancer
    should not send identify requests to a server that cannot check for deletions. ``models``
    says which models this process holds and answers with, which version is serving, and
    which versions are complete (every enrolled photo embedded; see ``upgrade.py``).
    Without a key (when keys are on) it says only ``{"status": "ok" | "degraded"}``; the
    details (models, pid, counts, the Redis error) need a read key."""
    svc = current_service()
    body: dict[str, Any] = {"model_version": svc.recognizer.version, "pid": os.getpid(),
                            "model_threshold": round(svc.recognizer.threshold, 6),
                            "inference_backend": svc.config.inference_backend,
                            "auth": "open" if svc.config.open_mode else "api_keys"}
    try:
        for cache in svc.caches.values():  # keeps the caches of an upgrade's other model warm
            cache.sync()
        body["gallery"] = {"people": svc.store.count_people(), "people_with_vectors": len(svc.cache),
                           "generation": svc.cache.gen}
        body["score_norm"] = {"server": svc.config.score_norm, **svc.cache.cohort_status()}
        body["strangers"] = strangers_json(svc)
        body["models"] = {"loaded": svc.models.versions, "answering": svc.answering,
                          **read_state(svc.store).to_dict()}
        body["queue"] = {"name": svc.queue.name, "depth": svc.queue.count}
        body["redis"] = {"reachable": True}
        body["status"] = "ok"
        code = 200
    except (redis.RedisError, ServiceUnavailableError) as exc:
        body["gallery"] = {"people_with_vectors": len(svc.cache)}
        body["redis"] = {"reachable": False, "error": str(getattr(exc, "message", exc))}
        body["status"] = "degraded"
        code = 503
    if not may_read(svc.config):
        body = {"status": body["status"]}
    return body, code


@ops.get("/metrics")
def metrics() -> Response:
    svc = current_service()
    gauges: list[tuple[str, str, str, dict[str, str], float]] = [
        ("facerec_model_info", "gauge", "The model this process serves (value is always 1).",
         {"version": svc.recognizer.version}, 1.0),
        ("facerec_model_threshold", "gauge", "The model's calibrated cosine threshold.", {},
         svc.recognizer.threshold),
    ]
    try:
        svc.cache.sync()
        people = svc.store.count_people()
        depth = svc.queue.count
        started = svc.queue.started_job_registry.count
        failed = svc.queue.failed_job_registry.count
        up = 1.0
    except (redis.RedisError, ServiceUnavailableError):
        people = depth = started = failed = None
        up = 0.0
    gauges.append(("facerec_redis_up", "gauge", "1 if Redis answered this scrape.", {}, up))
    gauges.append(("facerec_gallery_people_with_vectors", "gauge",
                   "People with at least one image for this model, in this process's index.",
                   {"model_version": svc.recognizer.version}, float(len(svc.cache))))
    if svc.recognizer.strangers is not None:
        gauges.append(("facerec_expected_stranger_rate", "gauge",
                       "Chance that a stranger matches someone at identify's default threshold and this gallery size "
                       "(the model's stranger curve).", {}, strangers_json(svc)["expected_stranger_rate"]))
    if up:
        gauges += [
            ("facerec_gallery_people", "gauge", "People in the gallery (Redis).", {}, float(people)),
            ("facerec_enroll_queue_depth", "gauge", "Enrollment jobs waiting for a worker.",
             {"queue": svc.queue.name}, float(depth)),
            ("facerec_enroll_jobs", "gauge", "Enrollment jobs by state.",
             {"queue": svc.queue.name, "state": "started"}, float(started)),
            ("facerec_enroll_jobs", "gauge", "Enrollment jobs by state.",
             {"queue": svc.queue.name, "state": "failed"}, float(failed)),
        ]
    return Response(svc.metrics.render(gauges), mimetype=None, content_type=CONTENT_TYPE)


@ops.get("/openapi.json")
def openapi() -> Any:
    return build_openapi(current_service().recognizer.version)
