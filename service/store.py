"""The gallery in Redis: the single source of truth that every server and worker shares.

Layout (``p`` is ``REDIS_KEY_PREFIX``, ``v`` a model version, ``pid`` a person id)::

    p:people                 ZSET  pid -> created_at           (listing order)
    p:person:<pid>           HASH  name, metadata (JSON), created_at
    p:emb:<v>:<pid>          HASH  sha256 of the uploaded bytes -> float32 LE embedding
    p:imginfo:<v>:<pid>      HASH  sha256 -> JSON (enrolled_at, job_id, faces_found, box ...)
    p:crop:<pid>             HASH  sha256 -> JPEG of the face in the canonical aligned frame (KEEP_FACE_CROPS)
    p:model_versions         SET   the registered model versions: each write stores every one of them
    p:todo:<v>               SET   people with a photo (kept crop) not yet embedded by version v
    p:serving                STRING the version servers answer with, once complete (service.versions)
    p:gen                    STRING change counter, +1 per write
    p:changes                STREAM one entry per write: gen, person, op
    p:epoch                  STRING random token; changes when the data set is replaced (flush)
    p:upload:<job>:<n>       STRING an uploaded image waiting for its job (TTL)
    p:jobitems:<job>         HASH  n -> JSON {person_id, image_hash, filename} of each image (TTL)
    p:jobresults:<job>       LIST  per-image results of a job so far (TTL)
    p:personjobs:<pid>       SET   jobs whose items or results name the person (TTL)

People (name, metadata) do not depend on the model; embeddings do, so they are keyed by
model version and a server never reads another model's vectors. A photo is stored under
every registered version at once; a writer that lacks one of those models stores what it has
and names the person in that version's ``todo`` set, from which the kept crop is embedded
later (``upgrade.py``), so no version silently misses a photo. Each write is one Lua
script: the check, the write, the counter bump and the change-stream entry happen
atomically, so concurrent writers lose nothing and a follower can never see a write
without its change event.

Deleting a person, or one photo, erases in the same script every key that holds their photos,
embeddings or job items: parked uploads of pending jobs, job items and job results (found
through ``personjobs``). A pending job's item becomes a tombstone without the person id or the
photo hash (the job then reports ``person_deleted`` / ``image_deleted``), and a job result
naming them becomes such a row. The change stream keeps the person id (only the id and the
operation, never a photo or an embedding) until ``CHANGE_STREAM_MAXLEN`` trims it: its
``delete`` entry is what tells every other process to drop the person. The job itself (RQ's
hash) carries only upload keys, so it names nobody.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from redis import Redis

from recognizer.errors import ConflictError, InvalidRequestError

from .errors import ImageNotFoundError, ModelVersionError, PersonNotFoundError

PERSON_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
IMAGE_HASH_RE = re.compile(r"[0-9a-f]{64}")
MAX_NAME_LEN = 256
MAX_METADATA_BYTES = 16 * 1024

# Shared head of every write script: KEYS[1..3] = gen, changes, epoch; ARGV[1..2] = a fresh
# epoch token (used only if none is set yet) and the stream's approximate max length.
_BUMP = """
local function bump(pid, op)
  redis.call('SET', KEYS[3], ARGV[1], 'NX')
  local gen = redis.call('INCR', KEYS[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'gen', gen, 'person', pid, 'op', op)
  return gen
end
"""

# KEYS[4] person, KEYS[5] people; ARGV[3] pid, ARGV[4] name, ARGV[5] metadata, ARGV[6] created_at
_CREATE = _BUMP + """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
redis.call('HSET', KEYS[4], 'name', ARGV[4], 'metadata', ARGV[5], 'created_at', ARGV[6])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[3])
bump(ARGV[3], 'create')
return 1
"""

# Erase what pending and finished jobs hold of a person (hash == '') or of one photo: each job
# item becomes a tombstone (its upload is deleted) and each result row naming them is redacted.
_SCRUB = """
local function scrub(prefix, pid, hash)
  local status = 'person_deleted'
  if hash ~= '' then status = 'image_deleted' end
  local function hit(t) return t.person_id == pid and (hash == '' or t.image_hash == hash) end
  local function tomb(t)
    local out = {status = status}
    if t.index ~= nil then out.index = t.index end
    if hash ~= '' then out.person_id = pid end
    return cjson.encode(out)
  end
  for _, job in ipairs(redis.call('SMEMBERS', prefix .. ':personjobs:' .. pid)) do
    local items = prefix .. ':jobitems:' .. job
    local flat = redis.call('HGETALL', items)
    for i = 1, #flat, 2 do
      local ok, item = pcall(cjson.decode, flat[i + 1])
      if ok and type(item) == 'table' and hit(item) then
        redis.call('HSET', items, flat[i], tomb({}))
        redis.call('DEL', prefix .. ':upload:' .. job .. ':' .. flat[i])
      end
    end
    local results = prefix .. ':jobresults:' .. job
    for i, row in ipairs(redis.call('LRANGE', results, 0, -1)) do
      local ok, r = pcall(cjson.decode, row)
      if ok and type(r) == 'table' and hit(r) then redis.call('LSET', results, i - 1, tomb(r)) end
    end
  end
end
"""

# KEYS[4] person, KEYS[5] people, KEYS[6] model_versions, KEYS[7] crop; ARGV[3] pid, ARGV[4] key prefix
_DELETE = _BUMP + _SCRUB + """
if redis.call('EXISTS', KEYS[4]) == 0 then return 0 end
redis.call('DEL', KEYS[4], KEYS[7])
redis.call('ZREM', KEYS[5], ARGV[3])
for _, v in ipairs(redis.call('SMEMBERS', KEYS[6])) do
  redis.call('DEL', ARGV[4] .. ':emb:' .. v .. ':' .. ARGV[3], ARGV[4] .. ':imginfo:' .. v .. ':' .. ARGV[3])
  redis.call('SREM', ARGV[4] .. ':todo:' .. v, ARGV[3])
end
scrub(ARGV[4], ARGV[3], '')
redis.call('DEL', ARGV[4] .. ':personjobs:' .. ARGV[3])
bump(ARGV[3], 'delete')
return 1
"""

# KEYS[4] person, KEYS[5] model_versions, KEYS[6] crop
# ARGV[3] pid, ARGV[4] image hash, ARGV[5] info JSON, ARGV[6] crop bytes ('' = none), ARGV[7] key prefix,
# ARGV[8..] (model version, embedding bytes) pairs. Versions not registered are skipped unless
# none is registered yet (the first photo of a new gallery registers its writer's models); a
# registered version the writer lacks gets the person in its todo set.
_ADD_IMAGE = _BUMP + """
if redis.call('EXISTS', KEYS[4]) == 0 then return {'no_person', ''} end
local pid, hash, pre = ARGV[3], ARGV[4], ARGV[7]
local registered = redis.call('SMEMBERS', KEYS[5])
local is_registered = {}
for _, v in ipairs(registered) do
  is_registered[v] = true
  if redis.call('HEXISTS', pre .. ':emb:' .. v .. ':' .. pid, hash) == 1 then
    return {'duplicate', redis.call('HGET', pre .. ':imginfo:' .. v .. ':' .. pid, hash) or ''}
  end
end
local written, any = {}, false
for i = 8, #ARGV - 1, 2 do
  local v = ARGV[i]
  if #registered == 0 or is_registered[v] then
    redis.call('HSET', pre .. ':emb:' .. v .. ':' .. pid, hash, ARGV[i + 1])
    redis.call('HSET', pre .. ':imginfo:' .. v .. ':' .. pid, hash, ARGV[5])
    redis.call('SADD', KEYS[5], v)
    written[v], any = true, true
  end
end
if not any then return {'no_version', table.concat(registered, ',')} end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[6], hash, ARGV[6]) end
for _, v in ipairs(registered) do
  if not written[v] then redis.call('SADD', pre .. ':todo:' .. v, pid) end
end
return {'enrolled', tostring(bump(pid, 'add_image'))}
"""

# KEYS[4] person, KEYS[5] model_versions, KEYS[6] crop; ARGV[3] pid, ARGV[4] image hash, ARGV[5] key prefix
# The photo goes from every version and its crop with it.
_REMOVE_IMAGE = _BUMP + _SCRUB + """
if redis.call('EXISTS', KEYS[4]) == 0 then return -1 end
local removed = redis.call('HDEL', KEYS[6], ARGV[4])
for _, v in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  local emb = ARGV[5] .. ':emb:' .. v .. ':' .. ARGV[3]
  removed = removed + redis.call('HDEL', emb, ARGV[4])
  redis.call('HDEL', ARGV[5] .. ':imginfo:' .. v .. ':' .. ARGV[3], ARGV[4])
end
if removed == 0 then return 0 end
scrub(ARGV[5], ARGV[3], ARGV[4])
bump(ARGV[3], 'remove_image')
return 1
"""

# Park a job's uploads: KEYS[1] job items; ARGV[1] job id, ARGV[2] key prefix, ARGV[3] the
# uploads' TTL, ARGV[4] the items' TTL, then (person id, item JSON, image bytes) per image. An
# item of a person deleted meanwhile is parked as a tombstone, without its photo.
_PUT_UPLOADS = """
local job, prefix, ttl, keep = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local n = 0
for i = 5, #ARGV, 3 do
  local pid = ARGV[i]
  if redis.call('EXISTS', prefix .. ':person:' .. pid) == 1 then
    redis.call('SET', prefix .. ':upload:' .. job .. ':' .. n, ARGV[i + 2], 'EX', ttl)
    redis.call('HSET', KEYS[1], n, ARGV[i + 1])
    local pj = prefix .. ':personjobs:' .. pid
    redis.call('SADD', pj, job)
    if redis.call('TTL', pj) < keep then redis.call('EXPIRE', pj, keep) end
  else
    redis.call('HSET', KEYS[1], n, cjson.encode({status = 'person_deleted'}))
  end
  n = n + 1
end
redis.call('EXPIRE', KEYS[1], keep)
return n
"""

# Record one result row of a job, unless what it names was deleted since the job looked:
# KEYS[1] results, KEYS[2] person, KEYS[3] emb, KEYS[4] personjobs; ARGV[1] row, ARGV[2] TTL,
# ARGV[3] job id, ARGV[4] row if the person is gone, ARGV[5] row if its stored photo ARGV[6] is
# gone ('' where that cannot apply). Returns the row written.
_APPEND_RESULT = """
local row, ttl = ARGV[1], tonumber(ARGV[2])
if KEYS[2] ~= '' then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    row = ARGV[4]
  elseif ARGV[5] ~= '' and redis.call('HEXISTS', KEYS[3], ARGV[6]) == 0 then
    row = ARGV[5]
  else
    redis.call('SADD', KEYS[4], ARGV[3])
    if redis.call('TTL', KEYS[4]) < ttl then redis.call('EXPIRE', KEYS[4], ttl) end
  end
end
redis.call('RPUSH', KEYS[1], row)
redis.call('EXPIRE', KEYS[1], ttl)
return row
"""


@dataclass(frozen=True)
class Person:
    """One person as the API shows them; ``image_count`` counts this model version's images."""

    person_id: str
    name: str
    metadata: dict[str, Any]
    created_at: float
    image_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"person_id": self.person_id, "name": self.name, "metadata": self.metadata,
                "created_at": self.created_at, "image_count": self.image_count}


@dataclass(frozen=True)
class Change:
    """One entry of the change stream."""

    stream_id: bytes
    gen: int
    person_id: str
    op: str


@dataclass(frozen=True)
class Marker:
    """Where the gallery is: followers compare this with what they have applied."""

    epoch: bytes | None
    gen: int


class GalleryStore:
    """Reads and atomic writes of the gallery for one model version, over one Redis connection.

    The connection is passed in (never a global) so that a test, a worker and a server each
    decide which Redis they talk to. It must return bytes (``decode_responses=False``), as
    RQ's connections do, because embeddings are stored as raw float32.
    """

    def __init__(self, redis: Redis, model_version: str, dim: int, prefix: str = "fr",
                 stream_maxlen: int = 100_000) -> None:
        self.redis = redis
        self.model_version = model_version
        self.dim = dim
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self._create = redis.register_script(_CREATE)
        self._delete = redis.register_script(_DELETE)
        self._add_image = redis.register_script(_ADD_IMAGE)
        self._remove_image = redis.register_script(_REMOVE_IMAGE)
        self._put_uploads = redis.register_script(_PUT_UPLOADS)
        self._append_result = redis.register_script(_APPEND_RESULT)

    # -- keys --------------------------------------------------------------------------

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def people_key(self) -> str:
        return self._k("people")

    def person_key(self, pid: str) -> str:
        return self._k("person", pid)

    def emb_key(self, pid: str) -> str:
        return self.emb_key_of(self.model_version, pid)

    def info_key(self, pid: str) -> str:
        return self.info_key_of(self.model_version, pid)

    def crop_key(self, pid: str) -> str:
        return self._k("crop", pid)

    def emb_key_of(self, version: str, pid: str) -> str:
        return self._k("emb", version, pid)

    def info_key_of(self, version: str, pid: str) -> str:
        return self._k("imginfo", version, pid)

    def todo_key(self, version: str) -> str:
        return self._k("todo", version)

    @property
    def versions_key(self) -> str:
        return self._k("model_versions")

    @property
    def serving_key(self) -> str:
        return self._k("serving")

    def upload_key(self, job_id: str, n: int) -> str:
        return self._k("upload", job_id, str(n))

    def job_results_key(self, job_id: str) -> str:
        return self._k("jobresults", job_id)

    def job_items_key(self, job_id: str) -> str:
        return self._k("jobitems", job_id)

    def person_jobs_key(self, pid: str) -> str:
        return self._k("personjobs", pid)

    @property
    def _bump_keys(self) -> list[str]:
        return [self._k("gen"), self._k("changes"), self._k("epoch")]

    def _bump_args(self) -> list[Any]:
        return [uuid.uuid4().hex, self.stream_maxlen]

    def gallery_keys_pattern(self) -> str:
        """Everything that makes up the gallery (not uploads, job results or metrics)."""
        return self._k("*")

    # -- people ------------------------------------------------------------------------

    def create_person(self, name: Any, metadata: Any = None, person_id: Any = None) -> Person:
        """Create a person with no images yet; ConflictError if ``person_id`` is taken."""
        clean_name = check_name(name)
        meta = check_metadata(metadata)
        pid = uuid.uuid4().hex if person_id is None else check_person_id(person_id)
        created_at = round(time.time(), 6)
        ok = self._create(
            keys=[*self._bump_keys, self.person_key(pid), self.people_key],
            args=[*self._bump_args(), pid, clean_name, json.dumps(meta), repr(created_at)],
        )
        if not ok:
            raise ConflictError(f"person {pid!r} already exists", person_id=pid)
        return Person(pid, clean_name, meta, created_at, 0)

    def get_person(self, person_id: str) -> Person:
        """One person with this model version's image count; PersonNotFoundError if unknown."""
        pid = _lookup_id(person_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.person_key(pid))
            pipe.hlen(self.emb_key(pid))
            fields, count = pipe.execute()
        if not fields:
            raise PersonNotFoundError(f"no person with id {pid!r}", person_id=pid)
        return _person(pid, fields, count)

    def exists(self, person_id: str) -> bool:
        return bool(PERSON_ID_RE.fullmatch(str(person_id))) and bool(self.redis.exists(self.person_key(person_id)))

    def count_people(self) -> int:
        return int(self.redis.zcard(self.people_key))

    def list_people(self, offset: int = 0, limit: int = 100) -> tuple[int, list[Person]]:
        """(total, one page of people in creation order, each with its image count)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zcard(self.people_key)
            pipe.zrange(self.people_key, offset, offset + limit - 1)
            total, raw_ids = pipe.execute()
        pids = [r.decode() for r in raw_ids]
        with self.redis.pipeline(transaction=False) as pipe:
            for pid in pids:
                pipe.hgetall(self.person_key(pid))
                pipe.hlen(self.emb_key(pid))
            replies = pipe.execute()
        people = [
            _person(pid, replies[2 * i], replies[2 * i + 1])
            for i, pid in enumerate(pids)
            if replies[2 * i]  # deleted between the two round trips
        ]
        return int(total), people

    def delete_person(self, person_id: str) -> None:
        """Delete a person, their embeddings of every model version and their kept crops, atomically."""
        pid = _lookup_id(person_id)
        ok = self._delete(
            keys=[*self._bump_keys, self.person_key(pid), self.people_key, self.versions_key, self.crop_key(pid)],
            args=[*self._bump_args(), pid, self.prefix],
        )
        if not ok:
            raise PersonNotFoundError(f"no person with id {pid!r}", person_id=pid)

    # -- images ------------------------------------------------------------------------

    def person_images(self, person_id: str) -> list[dict[str, Any]]:
        """This model version's images of a person: hash plus what was recorded at enrollment."""
        pid = _lookup_id(person_id)
        raw = self.redis.hgetall(self.info_key(pid))
        images = []
        for key, value in raw.items():
            try:
                info = json.loads(value)
            except ValueError:
                info = {}
            images.append({"image_hash": key.decode(), **info})
        images.sort(key=lambda i: (i.get("enrolled_at", 0), i["image_hash"]))
        return images

    def has_image(self, person_id: str, image_hash: str) -> bool:
        return bool(self.redis.hexists(self.emb_key(person_id), image_hash))

    def image_info(self, person_id: str, image_hash: str) -> dict[str, Any] | None:
        """What was recorded when this photo was stored (``job_id`` ...), None if it is not."""
        raw = self.redis.hget(self.info_key(person_id), image_hash)
        return None if raw is None else _json_dict(raw)

    def add_image(self, person_id: str, image_hash: str, embedding: np.ndarray | Mapping[str, np.ndarray],
                  info: Mapping[str, Any], crop: bytes | None = None) -> tuple[str, dict[str, Any]]:
        """Store one photo: its embedding (one array for this store's version, or
        ``{version: array}`` from a process holding several models) and its kept ``crop``.
        Returns ``("enrolled", info)`` or ``("duplicate", existing info)``.

        PersonNotFoundError if the person was deleted meanwhile (nothing is written then);
        ModelVersionError if none of the given versions is one the gallery keeps.
        """
        pid = _lookup_id(person_id)
        check_image_hash(image_hash)
        vectors = embedding if isinstance(embedding, Mapping) else {self.model_version: embedding}
        pairs: list[Any] = []
        for version, value in vectors.items():
            vec = np.asarray(value, dtype="<f4").reshape(-1)
            dim = self.dim if version == self.model_version else vec.shape[0]
            if vec.shape[0] != dim or not np.all(np.isfinite(vec)):
                raise InvalidRequestError(f"embedding must be {dim} finite floats")
            pairs += [version, vec.tobytes()]
        status, payload = self._add_image(
            keys=[*self._bump_keys, self.person_key(pid), self.versions_key, self.crop_key(pid)],
            args=[*self._bump_args(), pid, image_hash, json.dumps(dict(info)), crop or b"", self.prefix, *pairs],
        )
        status = status.decode()
        if status == "no_person":
            raise PersonNotFoundError(f"person {pid!r} no longer exists", person_id=pid)
        if status == "no_version":
            raise ModelVersionError(
                f"this process holds model(s) {', '.join(vectors)} but the gallery keeps model(s) "
                f"{payload.decode()}: run it with MODEL_PATH (or NEXT_MODEL_PATH) set to one of those")
        if status == "duplicate":
            try:
                return status, json.loads(payload) if payload else {}
            except ValueError:
                return status, {}
        return status, dict(info)

    def crops(self, person_id: str) -> dict[str, bytes]:
        """A person's kept face crops: {image hash: JPEG bytes}."""
        return {k.decode(): v for k, v in self.redis.hgetall(self.crop_key(_lookup_id(person_id))).items()}

    def remove_image(self, person_id: str, image_hash: str) -> None:
        """Drop one photo from every model version, with its kept crop."""
        pid = _lookup_id(person_id)
        if not isinstance(image_hash, str) or not IMAGE_HASH_RE.fullmatch(image_hash):
            raise ImageNotFoundError(f"person {pid!r} has no image {image_hash!r}", person_id=pid)
        result = self._remove_image(
            keys=[*self._bump_keys, self.person_key(pid), self.versions_key, self.crop_key(pid)],
            args=[*self._bump_args(), pid, image_hash, self.prefix],
        )
        if result == -1:
            raise PersonNotFoundError(f"no person with id {pid!r}", person_id=pid)
        if result == 0:
            raise ImageNotFoundError(f"person {pid!r} has no image {image_hash!r}",
                                     person_id=pid, image_hash=image_hash)

    def embeddings(self, person_id: str) -> np.ndarray:
        """(n, dim) float32 embeddings of this model version (n may be 0)."""
        return self._decode_embeddings(self.redis.hgetall(self.emb_key(person_id)))

    def _decode_embeddings(self, raw: Mapping[bytes, bytes]) -> np.ndarray:
        rows = [np.frombuffer(v, dtype="<f4") for v in raw.values() if len(v) == 4 * self.dim]
        if not rows:
            return np.zeros((0, self.dim), np.float32)
        return np.stack(rows).astype(np.float32)

    def load_people(self, person_ids: Iterable[str], chunk: int = 500) -> dict[str, tuple[str, np.ndarray] | None]:
        """Name and embeddings of each person (None for people that no longer exist)."""
        pids = list(person_ids)
        out: dict[str, tuple[str, np.ndarray] | None] = {}
        for start in range(0, len(pids), chunk):
            part = pids[start:start + chunk]
            with self.redis.pipeline(transaction=False) as pipe:
                for pid in part:
                    pipe.hget(self.person_key(pid), "name")
                    pipe.hgetall(self.emb_key(pid))
                replies = pipe.execute()
            for i, pid in enumerate(part):
                name, raw = replies[2 * i], replies[2 * i + 1]
                out[pid] = None if name is None else (name.decode(), self._decode_embeddings(raw))
        return out

    def names(self, person_ids: Sequence[str]) -> list[str | None]:
        """Each person's name (None for people that no longer exist), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for pid in person_ids:
                pipe.hget(self.person_key(pid), "name")
            return [None if raw is None else raw.decode() for raw in pipe.execute()]

    def all_person_ids(self) -> list[str]:
        return [r.decode() for r in self.redis.zrange(self.people_key, 0, -1)]

    # -- change following --------------------------------------------------------------

    def marker(self) -> Marker:
        """The current (epoch, gen): one cheap round trip, done before answering a request."""
        epoch, gen = self.redis.mget(self._k("epoch"), self._k("gen"))
        return Marker(epoch, int(gen or 0))

    def snapshot_marker(self) -> tuple[Marker, bytes]:
        """(marker, last stream id), read atomically, taken *before* a full reload so that
        any write racing with the reload is replayed afterwards. Names the data set first
        (epoch) if nobody has yet, so that the first write does not look like a new data set."""
        self.redis.set(self._k("epoch"), uuid.uuid4().hex, nx=True)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.mget(self._k("epoch"), self._k("gen"))
            pipe.xrevrange(self._k("changes"), count=1)
            (epoch, gen), last = pipe.execute()
        return Marker(epoch, int(gen or 0)), (last[0][0] if last else b"0-0")

    def changes_after(self, stream_id: bytes, count: int = 10_000) -> list[Change]:
        """Change-stream entries after ``stream_id`` (exclusive), oldest first."""
        start = b"(" + stream_id if stream_id != b"0-0" else b"-"
        entries = self.redis.xrange(self._k("changes"), min=start, max="+", count=count)
        out = []
        for sid, fields in entries:
            out.append(Change(sid, int(fields.get(b"gen", 0)), fields.get(b"person", b"").decode(),
                              fields.get(b"op", b"").decode()))
        return out

    # -- uploads and job results -------------------------------------------------------

    def put_uploads(self, job_id: str, items: Sequence[tuple[str, Mapping[str, Any], bytes]], ttl: int,
                    keep: int) -> list[str]:
        """Park a job's images for ``ttl`` seconds, one key each, and its items ``n -> {person_id,
        image_hash, filename}`` for ``keep`` seconds, for ``[(person_id, item, bytes)]``,
        atomically; returns the upload keys. Items live apart from the job so that a delete can
        erase them."""
        args: list[Any] = [job_id, self.prefix, int(ttl), int(keep)]
        for pid, item, data in items:
            args += [pid, json.dumps({**item, "person_id": pid}), data]
        self._put_uploads(keys=[self.job_items_key(job_id)], args=args)
        return [self.upload_key(job_id, n) for n in range(len(items))]

    def job_chunk(self, job_id: str, indices: Sequence[int], uploads: Sequence[str],
                  ) -> list[tuple[dict[str, Any] | None, bytes | None]]:
        """Items ``indices`` of a job ({person_id, image_hash, filename}, or a tombstone {status}
        once its person or photo was deleted) with the uploaded bytes under ``uploads`` (same
        order; None for whatever expired), in one round trip: a worker reads a whole chunk at once."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.job_items_key(job_id), [str(i) for i in indices])
        if uploads:
            pipe.mget(list(uploads))
        replies = pipe.execute()
        items = [None if raw is None else json.loads(raw) for raw in replies[0]]
        datas = replies[1] if uploads else [None] * len(items)
        return list(zip(items, datas))

    def images_info(self, keys: Sequence[tuple[str, str]]) -> list[dict[str, Any] | None]:
        """:meth:`image_info` for many (person id, image hash) pairs, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for person_id, image_hash in keys:
            pipe.hget(self.info_key(person_id), image_hash)
        return [None if raw is None else _json_dict(raw) for raw in (pipe.execute() if keys else [])]

    def drop_job_items(self, job_id: str) -> None:
        self.redis.delete(self.job_items_key(job_id))

    def append_job_results(self, job_id: str, results: Sequence[Mapping[str, Any]], ttl: int,
                           drop_uploads: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Record a chunk's result rows, in order, then delete its ``drop_uploads``, in one round
        trip; returns the rows written. Each row is its own atomic script: a row naming a person
        (or a stored photo) deleted since the job looked at it is written redacted, so a delete
        can never be followed by a row naming what it erased."""
        pipe = self.redis.pipeline(transaction=False)
        for result in results:
            keys, args = self._result_script_args(job_id, dict(result), ttl)
            self._append_result(keys=keys, args=args, client=pipe)
        if drop_uploads:
            pipe.delete(*drop_uploads)
        replies = pipe.execute()
        return [json.loads(raw) for raw in replies[:len(results)]]

    def _result_script_args(self, job_id: str, row: dict[str, Any], ttl: int) -> tuple[list[str], list[Any]]:
        pid = row.get("person_id")
        keys = [self.job_results_key(job_id), "", "", ""]
        args: list[Any] = [json.dumps(row), int(ttl), job_id, "", "", ""]
        if isinstance(pid, str) and PERSON_ID_RE.fullmatch(pid):
            keys = [self.job_results_key(job_id), self.person_key(pid), self.emb_key(pid), self.person_jobs_key(pid)]
            gone = {"index": row.get("index"), "status": "person_deleted", "message": "the person was deleted"}
            args[3] = json.dumps(gone)
            if row.get("status") in ("enrolled", "duplicate") and row.get("image_hash"):
                args[4] = json.dumps({"index": row.get("index"), "person_id": pid, "status": "image_deleted",
                                      "message": "the photo was deleted"})
                args[5] = row["image_hash"]
        return keys, args

    def job_results(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(r) for r in self.redis.lrange(self.job_results_key(job_id), 0, -1)]


def _person(pid: str, fields: Mapping[bytes, bytes], count: int) -> Person:
    try:
        meta = json.loads(fields.get(b"metadata", b"{}"))
    except ValueError:
        meta = {}
    return Person(pid, fields.get(b"name", b"").decode(), meta,
                  float(fields.get(b"created_at", b"0")), int(count))


def _lookup_id(person_id: Any) -> str:
    """An id used to look someone up: a malformed one cannot exist, so it is a 404, not a 400."""
    if not isinstance(person_id, str) or not PERSON_ID_RE.fullmatch(person_id):
        raise PersonNotFoundError(f"no person with id {person_id!r}", person_id=str(person_id)[:200])
    return person_id


def check_person_id(person_id: Any) -> str:
    if not isinstance(person_id, str) or not PERSON_ID_RE.fullmatch(person_id):
        raise InvalidRequestError(
            "person_id must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
            field="person_id",
        )
    return person_id


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequestError("name is required and must be a non-empty string", field="name")
    name = name.strip()
    if len(name) > MAX_NAME_LEN or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidRequestError(f"name must be at most {MAX_NAME_LEN} characters without control characters",
                                  field="name")
    return name


def check_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise InvalidRequestError("metadata must be a JSON object", field="metadata")
    try:
        text = json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"metadata must be plain JSON: {exc}", field="metadata") from None
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise InvalidRequestError(f"metadata must be at most {MAX_METADATA_BYTES} bytes as JSON", field="metadata")
    return json.loads(text)


def check_image_hash(image_hash: Any) -> str:
    if not isinstance(image_hash, str) or not IMAGE_HASH_RE.fullmatch(image_hash):
        raise InvalidRequestError("image hash must be 64 lowercase hex digits (sha256)", field="image_hash")
    return image_hash


def _json_dict(raw: bytes) -> dict[str, Any]:
    """A stored JSON object; {} for anything else (a record we cannot read is still a record)."""
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
