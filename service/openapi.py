"""The OpenAPI 3.1 document of the service, served at ``/openapi.json``.

Written by hand (no extra dependency) next to a test that compares its paths and methods
with Flask's real ``url_map``, so the document cannot silently drift from the routes.
"""
from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _image_body(fields: dict[str, str], extra: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A request body accepted as multipart (files) or JSON (base64 strings)."""
    multipart = {k: {"type": "string", "format": "binary", "description": d} for k, d in fields.items()}
    as_json = {k: {"type": "string", "contentEncoding": "base64", "description": d} for k, d in fields.items()}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {**multipart, **extra}}},
            "application/json": {"schema": {"type": "object", "properties": {**as_json, **extra},
                                            "required": required}},
        },
    }


COMMON_ERRORS = {
    "400": _err("Malformed input: bad base64, bad parameter, unreadable image"),
    "401": _err("Missing or unknown API key"),
    "413": _err("Image or request over the configured byte or pixel limit"),
    "415": _err("Unsupported Content-Type"),
    "429": {**_err("Over the rate limit of this key or address (RATE_LIMIT), or this server process already "
                   "runs MAX_INFLIGHT model requests; retry after Retry-After seconds"),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
    "503": _err("Redis unreachable"),
}

K = {"type": "integer", "minimum": 1, "description": "how many candidates per face (default DEFAULT_K)"}
THRESHOLD = {"type": "number", "minimum": -1, "maximum": 1,
             "description": "cosine needed for a match (default: the model's calibrated threshold)"}
MIN_FACE_SIZE = {"type": "integer", "minimum": 12, "maximum": 4096,
                 "description": "smallest face to look for, in the photo's pixels (at least MIN_FACE_SIZE, the "
                                "default); larger is cheaper: 80 for a checkpoint camera"}
SCORE_NORM = {"type": "string", "enum": ["on", "off"],
              "description": "on: once the gallery holds the model's calibrated cohort (400 people), decide on the "
                             "AS-norm score, which marks down faces that resemble many people; off: on the cosine. "
                             "Default: the server's SCORE_NORM (off unless it is 'default'). Not with threshold"}
RULE = {"rule": {"enum": ["cosine", "as_norm"], "description": "what the decision was made on"},
        "score_threshold": {"type": "number", "description": "the AS-norm threshold (rule as_norm only)"},
        "score_norm_unused": {"type": "string", "description": "why score_norm on fell back to the cosine"}}
PERSON_ID_PARAM = {"name": "person_id", "in": "path", "required": True, "schema": {"type": "string"}}


def build_openapi(model_version: str | None = None) -> dict[str, Any]:
    read = [{"ApiKey": []}, {"Bearer": []}]
    admin = read
    admin_errors = {**COMMON_ERRORS, "403": _err("A read-only key was used for an admin operation")}
    paths: dict[str, Any] = {
        "/health": {"get": {
            "summary": "Readiness: {status} for anyone; with a read key (or in open mode) also the model "
                       "version, gallery size, queue depth and whether Redis is reachable",
            "security": [],
            "responses": {"200": _ok("Healthy", {"$ref": "#/components/schemas/Health"}),
                          "503": _ok("Redis unreachable", {"$ref": "#/components/schemas/Health"})},
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics (text exposition format 0.0.4)",
            "security": [],
            "responses": {"200": {"description": "Metrics",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
            "summary": "This document", "security": [],
            "responses": {"200": _ok("OpenAPI document", {"type": "object"})},
        }},
        "/": {"get": {
            "summary": "The web console: an HTML page for enrollment, attendance and a camera checkpoint, "
                       "a client of /v1 (it asks the operator for an API key and sends it like any other client)",
            "security": [],
            "responses": {"200": {"description": "The console page",
                                  "content": {"text/html": {"schema": {"type": "string"}}}}},
        }},
        "/favicon.ico": {"get": {
            "summary": "The console's tab icon", "security": [],
            "responses": {"200": {"description": "An ICO file",
                                  "content": {"image/vnd.microsoft.icon": {"schema": {"type": "string",
                                                                                     "format": "binary"}}}}},
        }},
        "/console/{filename}": {
            "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "console.js or console.css"}],
            "get": {
                "summary": "The web console's script and stylesheet",
                "security": [],
                "responses": {"200": {"description": "The file",
                                      "content": {"text/javascript": {"schema": {"type": "string"}},
                                                  "text/css": {"schema": {"type": "string"}}}},
                              "404": _err("No such file")},
            },
        },
        "/v1/identify": {"post": {
            "summary": "Who is in this photo? Every face with its top-k people and a decision",
            "security": read,
            "requestBody": _image_body({"image": "the photo"},
                                       {"k": K, "threshold": THRESHOLD, "score_norm": SCORE_NORM,
                                        "min_face_size": MIN_FACE_SIZE}, ["image"]),
            "responses": {"200": _ok("Faces found (possibly none)", {"$ref": "#/components/schemas/Identify"}),
                          **COMMON_ERRORS},
        }},
        "/v1/verify": {"post": {
            "summary": "Same person? Two photos, or a photo and an enrolled person_id",
            "security": read,
            "requestBody": _image_body(
                {"image": "first photo (its largest face is used)", "image2": "second photo"},
                {"person_id": {"type": "string", "description": "instead of image2"}, "threshold": THRESHOLD,
                 "score_norm": SCORE_NORM},
                ["image"]),
            "responses": {"200": _ok("Verdict", {"$ref": "#/components/schemas/Verify"}),
                          "404": _err("Unknown person"),
                          "409": _err("The person has no enrolled images for this model"),
                          "422": _err("No face in one of the images"), **COMMON_ERRORS},
        }},
        "/v1/people": {
            "get": {
                "summary": "Enrolled people with their image counts, in creation order",
                "security": read,
                "parameters": [
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
                "responses": {"200": _ok("A page of people", {"type": "object", "properties": {
                    "total": {"type": "integer"}, "offset": {"type": "integer"}, "limit": {"type": "integer"},
                    "people": {"type": "array", "items": {"$ref": "#/components/schemas/Person"}}}}),
                    **COMMON_ERRORS},
            },
            "post": {
                "summary": "Create a person (no images yet)",
                "security": admin,
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/NewPerson"}},
                    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/NewPerson"}},
                    "application/x-www-form-urlencoded": {"schema": {"$ref": "#/components/schemas/NewPerson"}},
                }},
                "responses": {"201": _ok("Created", {"$ref": "#/components/schemas/Person"}),
                              "409": _err("person_id already taken"), **admin_errors},
            },
        },
        "/v1/people/{person_id}": {
            "parameters": [PERSON_ID_PARAM],
            "get": {
                "summary": "One person with their images (this model version)",
                "security": read,
                "responses": {"200": _ok("The person", {"$ref": "#/components/schemas/PersonDetail"}),
                              "404": _err("Unknown person"), **COMMON_ERRORS},
            },
            "delete": {
                "summary": "Delete a person and all their embeddings; no server matches them once this returns",
                "security": admin,
                "responses": {"200": _ok("Deleted", {"type": "object"}), "404": _err("Unknown person"),
                              **admin_errors},
            },
        },
        "/v1/people/{person_id}/images": {
            "parameters": [PERSON_ID_PARAM],
            "post": {
                "summary": "Enroll one photo now (synchronous); says why a photo is refused",
                "security": admin,
                "requestBody": _image_body({"image": "a photo of this person"}, {}, ["image"]),
                "responses": {"201": _ok("Enrolled", {"$ref": "#/components/schemas/ImageResult"}),
                              "200": _ok("Already enrolled (same bytes)", {"$ref": "#/components/schemas/ImageResult"}),
                              "404": _err("Unknown person"),
                              "422": _err("no_face or too_small"), **admin_errors},
            },
        },
        "/v1/people/{person_id}/images/{image_hash}": {
            "parameters": [PERSON_ID_PARAM, {"name": "image_hash", "in": "path", "required": True,
                                             "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}],
            "delete": {
                "summary": "Remove one image; the person's vector is recomputed",
                "security": admin,
                "responses": {"200": _ok("Removed", {"type": "object"}), "404": _err("Unknown person or image"),
                              **admin_errors},
            },
        },
        "/v1/enroll": {"post": {
            "summary": "Bulk enrollment in the background: returns 202 and a job to poll",
            "description": "multipart: person_id or name (+ metadata as JSON text) and files in `images`; "
                           "JSON: {\"people\": [{\"name\" | \"person_id\", \"metadata\"?, \"images\": [base64]}]}. "
                           "A `name` creates a new person. Per-image problems (no face, unreadable...) are "
                           "reported in the job's results, not as an HTTP error.",
            "security": admin,
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "person_id": {"type": "string"}, "name": {"type": "string"},
                    "metadata": {"type": "string", "description": "JSON object"},
                    "images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
                "application/json": {"schema": {"type": "object", "required": ["people"], "properties": {
                    "people": {"type": "array", "items": {"type": "object", "properties": {
                        "person_id": {"type": "string"}, "name": {"type": "string"}, "metadata": {"type": "object"},
                        "images": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}}}}}}}},
            }},
            "responses": {"202": {"description": "Queued; Location is the job URL",
                                  "headers": {"Location": {"schema": {"type": "string"}}},
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          "404": _err("Unknown person_id"), **admin_errors},
        }},
        "/v1/jobs/{job_id}": {
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {
                "summary": "An enrollment job: status, progress and per-image results",
                "security": read,
                "responses": {"200": _ok("The job", {"$ref": "#/components/schemas/Job"}),
                              "404": _err("Unknown or expired job"), **COMMON_ERRORS},
            },
        },
    }
    match = {"type": "object", "properties": {
        "person_id": {"type": "string"}, "name": {"type": "string"},
        "cosine": {"type": "number"}, "angle_deg": {"type": "number"},
        "score": {"type": "number", "description": "AS-norm score, where the gallery has its cohort"}}}
    face = {"type": "object", "properties": {
        "box": {"type": "array", "items": {"type": "number"}, "description": "x0, y0, x1, y1"},
        "probability": {"type": "number"}}}
    components = {
        "securitySchemes": {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "Bearer": {"type": "http", "scheme": "bearer"},
        },
        "schemas": {
            "Error": {"type": "object", "required": ["error", "message"], "properties": {
                "error": {"type": "string", "description": "machine-readable code"},
                "message": {"type": "string"}, "details": {"type": "object"}}},
            "Match": match,
            "Face": face,
            "Identify": {"type": "object", "properties": {
                "model_version": {"type": "string"}, "threshold": {"type": "number"}, "k": {"type": "integer"}, **RULE,
                "threshold_source": {"enum": ["model", "request", "stranger_rate"],
                                     "description": "stranger_rate: set from the gallery's size by the server's "
                                                    "STRANGER_RATE (at most that share of strangers matched to anyone)"},
                "stranger_rate": {"type": "object", "description": "with threshold_source stranger_rate", "properties": {
                    "target": {"type": "number"}, "people": {"type": "integer"},
                    "within_curve": {"type": "boolean", "description": "false: the gallery is larger than the model's "
                                                                       "stranger curve resolves; the threshold is its last"}}},
                "faces": {"type": "array", "items": {"allOf": [face, {"type": "object", "properties": {
                    "decision": {"enum": ["match", "unknown"]},
                    "person": {"oneOf": [match, {"type": "null"}]},
                    "matches": {"type": "array", "items": match}}}]}}}},
            "Verify": {"type": "object", "properties": {
                "same": {"type": "boolean"}, "cosine": {"type": "number"}, "angle_deg": {"type": "number"},
                "threshold": {"type": "number"}, **RULE,
                "score": {"type": "number", "description": "the AS-norm score (rule as_norm only)"}}},
            "NewPerson": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "person_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
                "metadata": {"type": "object"}}},
            "Person": {"type": "object", "properties": {
                "person_id": {"type": "string"}, "name": {"type": "string"}, "metadata": {"type": "object"},
                "created_at": {"type": "number"}, "image_count": {"type": "integer"}}},
            "PersonDetail": {"allOf": [{"$ref": "#/components/schemas/Person"}, {"type": "object", "properties": {
                "images": {"type": "array", "items": {"type": "object"}}}}]},
            "ImageResult": {"type": "object", "properties": {
                "status": {"enum": ["enrolled", "duplicate", "no_face", "too_small", "unreadable", "expired",
                                    "person_deleted", "image_deleted", "several_faces", "error"]},
                "person_id": {"type": "string"}, "image_hash": {"type": "string"},
                "faces_found": {"type": "integer"}, "message": {"type": "string"}}},
            "Job": {"type": "object", "properties": {
                "job_id": {"type": "string"},
                "status": {"enum": ["queued", "started", "finished", "failed", "scheduled", "deferred",
                                    "stopped", "canceled"]},
                "progress": {"type": "object", "properties": {"done": {"type": "integer"},
                                                               "total": {"type": "integer"}}},
                "results": {"type": "array", "items": {"$ref": "#/components/schemas/ImageResult"}},
                "summary": {"type": "object", "additionalProperties": {"type": "integer"}}}},
            "Health": {"type": "object", "required": ["status"], "properties": {
                "status": {"enum": ["ok", "degraded"]}, "model_version": {"type": "string"},
                "inference_backend": {"enum": ["torch", "onnx", "onnx-int8"],
                                      "description": "INFERENCE_BACKEND: how this process runs the networks"},
                "gallery": {"type": "object"}, "redis": {"type": "object"},
                "models": {"type": "object", "description": "loaded: this process's models; answering: the one "
                           "this request used; serving: the version Redis names (null before any upgrade); "
                           "versions: {version: {complete, people_to_embed}} for every version the gallery keeps",
                           "properties": {"loaded": {"type": "array", "items": {"type": "string"}},
                                          "answering": {"type": "string"},
                                          "serving": {"type": ["string", "null"]},
                                          "versions": {"type": "object"}}}}},
        },
    }
    description = "Face identification and verification against a Redis-backed gallery."
    if model_version:
        description += f" Serving model {model_version}."
    return {
        "openapi": "3.1.0",
        "info": {"title": "Face recognition service", "version": "1.0.0", "description": description},
        "servers": [{"url": "/"}],
        "security": read,
        "paths": paths,
        "components": components,
    }
