"""Model versions in the gallery: which are kept, which are complete, which one servers answer with.

A version is *registered* (``p:model_versions``) when the gallery keeps its embeddings: every
write stores every registered version it can, and a writer lacking one of those models names
the person in that version's ``p:todo:<v>`` set instead. Registering a new version puts every
person in its todo set; re-embedding their kept crops (:mod:`service.reembed`) empties it. So:

    complete(v)  <=>  v is registered and p:todo:<v> is empty

which is exact at every instant (the todo set and the embeddings change in the same Lua
scripts) and costs one ``SCARD``. ``p:serving`` names the version servers answer with; it is
only ever set to a complete version, and a server holding several models answers with the
serving one if complete, else another complete one it holds, so no switch opens a window in
which an enrolled person comes back unknown.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .errors import UpgradeRefusedError
from .store import _BUMP, GalleryStore

# KEYS[1] model_versions, KEYS[2] todo, KEYS[3] people; ARGV[1] version.
# Registers the version and queues every person for it, atomically: a photo enrolled from
# now on either gets this version's embedding from its writer or queues its person again.
_REGISTER = """
local added = redis.call('SADD', KEYS[1], ARGV[1])
if added == 0 then return -1 end
local pids = redis.call('ZRANGE', KEYS[3], 0, -1)
for i = 1, #pids, 5000 do
  redis.call('SADD', KEYS[2], unpack(pids, i, math.min(i + 4999, #pids)))
end
return #pids
"""

# KEYS[4] person, KEYS[5] crop, KEYS[6] emb:v:pid, KEYS[7] imginfo:v:pid, KEYS[8] todo:v, KEYS[9] model_versions
# ARGV[3] pid, ARGV[4] version, ARGV[5] key prefix, ARGV[6..] (hash, embedding, info JSON) triples.
# Stores embeddings of photos that still have their crop, then takes the person off the todo
# set if every photo (kept crop, or embedding of another version) now has one of this version.
# Returns the photos still missing, -1 if the person is gone, -2 if the version is not kept.
_PUT_EMBEDDINGS = _BUMP + """
if redis.call('SISMEMBER', KEYS[9], ARGV[4]) == 0 then return -2 end
if redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('SREM', KEYS[8], ARGV[3])
  return -1
end
local wrote = 0
for i = 6, #ARGV - 2, 3 do
  local h = ARGV[i]
  if redis.call('HEXISTS', KEYS[5], h) == 1 and redis.call('HEXISTS', KEYS[6], h) == 0 then
    redis.call('HSET', KEYS[6], h, ARGV[i + 1])
    redis.call('HSET', KEYS[7], h, ARGV[i + 2])
    wrote = wrote + 1
  end
end
local missing, seen = 0, {}
local function check(h)
  if not seen[h] then
    seen[h] = true
    if redis.call('HEXISTS', KEYS[6], h) == 0 then missing = missing + 1 end
  end
end
for _, h in ipairs(redis.call('HKEYS', KEYS[5])) do check(h) end
for _, w in ipairs(redis.call('SMEMBERS', KEYS[9])) do
  if w ~= ARGV[4] then
    for _, h in ipairs(redis.call('HKEYS', ARGV[5] .. ':emb:' .. w .. ':' .. ARGV[3])) do check(h) end
  end
end
if missing == 0 then redis.call('SREM', KEYS[8], ARGV[3]) end
if wrote > 0 then bump(ARGV[3], 'reembed') end
return missing
"""

# KEYS[1] model_versions, KEYS[2] todo, KEYS[3] serving; ARGV[1] version
_SWITCH = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return -1 end
local missing = redis.call('SCARD', KEYS[2])
if missing > 0 then return missing end
redis.call('SET', KEYS[3], ARGV[1])
return 0
"""

# KEYS[1] model_versions, KEYS[2] todo:v, KEYS[3] serving, KEYS[4] todo:serving; ARGV[1] version
_UNREGISTER = """
local serving = redis.call('GET', KEYS[3])
if not serving then return 'no_serving' end
if serving == ARGV[1] then return 'serving' end
if redis.call('SCARD', KEYS[4]) > 0 then return 'serving_incomplete' end
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 'not_registered' end
redis.call('DEL', KEYS[2])
return 'ok'
"""


@dataclass(frozen=True)
class VersionState:
    """What Redis says about the model versions, read in one round trip."""

    serving: str | None
    registered: tuple[str, ...]
    missing: dict[str, int] = field(default_factory=dict)  # people still to embed, per version

    def complete(self, version: str) -> bool:
        return version in self.registered and self.missing.get(version, 0) == 0

    def to_dict(self) -> dict[str, Any]:
        return {"serving": self.serving,
                "versions": {v: {"complete": self.complete(v), "people_to_embed": self.missing.get(v, 0)}
                             for v in self.registered}}


def read_state(store: GalleryStore, versions: Sequence[str] | None = None) -> VersionState:
    """The serving version and the registered versions with their todo counts. With
    ``versions`` (the models a process holds), one round trip that counts only those."""
    if versions is None:
        versions = sorted(v.decode() for v in store.redis.smembers(store.versions_key))
    with store.redis.pipeline(transaction=True) as pipe:
        pipe.get(store.serving_key)
        pipe.smembers(store.versions_key)
        for v in versions:
            pipe.scard(store.todo_key(v))
        serving, registered, *counts = pipe.execute()
    registered_names = tuple(sorted(v.decode() for v in registered))
    return VersionState(serving.decode() if serving else None, registered_names,
                        {v: int(n) for v, n in zip(versions, counts) if v in registered_names})


def choose_version(state: VersionState, loaded: Sequence[str]) -> str:
    """Which of this process's models answers: the serving version if it holds it and it is
    complete, else the first complete one it holds, else the serving (or its primary) one."""
    preferred = state.serving if state.serving in loaded else loaded[0]
    for version in [preferred, *(v for v in loaded if v != preferred)]:
        if state.complete(version):
            return version
    return preferred


def photos_without_crops(store: GalleryStore, chunk: int = 500) -> tuple[int, list[str]]:
    """(photos stored under some version that have no kept crop, the people they belong to)."""
    versions = [v.decode() for v in store.redis.smembers(store.versions_key)]
    pids = store.all_person_ids()
    photos, people = 0, []
    for start in range(0, len(pids), chunk):
        part = pids[start:start + chunk]
        with store.redis.pipeline(transaction=False) as pipe:
            for pid in part:
                pipe.hkeys(store.crop_key(pid))
                for v in versions:
                    pipe.hkeys(store.emb_key_of(v, pid))
            replies = pipe.execute()
        step = 1 + len(versions)
        for i, pid in enumerate(part):
            crops = set(replies[i * step])
            stored = set().union(*replies[i * step + 1:(i + 1) * step]) if versions else set()
            lacking = stored - crops
            if lacking:
                photos += len(lacking)
                people.append(pid)
    return photos, people


def register(store: GalleryStore, version: str, keep_face_crops: bool) -> int:
    """Start keeping ``version``: queue every person for re-embedding. Returns the number
    queued (-1: it was registered already, a resumed upgrade). UpgradeRefusedError when the
    gallery cannot be re-embedded: crops are not kept, or some photos have none."""
    if not keep_face_crops:
        raise UpgradeRefusedError(
            "face crops are not kept (KEEP_FACE_CROPS=0), so the service holds nothing a new model "
            f"could embed: upgrading to model {version} needs every person enrolled again from their "
            "photos. Turn KEEP_FACE_CROPS on and re-enroll, or start a new gallery with the new model.")
    lacking, people = photos_without_crops(store)
    if lacking:
        shown = ", ".join(people[:10]) + (" ..." if len(people) > 10 else "")
        raise UpgradeRefusedError(
            f"{lacking} photo(s) of {len(people)} person(s) have no kept face crop (enrolled before crops "
            f"were kept, or with KEEP_FACE_CROPS=0): model {version} could not recognise them. Enroll those "
            f"people again (or delete them), then upgrade. People: {shown}",
            photos=lacking, people=len(people))
    return int(store.redis.register_script(_REGISTER)(
        keys=[store.versions_key, store.todo_key(version), store.people_key], args=[version]))


def put_embeddings(store: GalleryStore, version: str, person_id: str,
                   items: Sequence[tuple[str, np.ndarray, dict[str, Any]]]) -> int:
    """Store re-embedded photos of one person (only those whose crop still exists); returns
    how many of their photos still lack this version (0: done), -1 if the person is gone."""
    args: list[Any] = []
    for image_hash, vector, info in items:
        args += [image_hash, np.asarray(vector, dtype="<f4").reshape(-1).tobytes(), json.dumps(info)]
    return int(store.redis.register_script(_PUT_EMBEDDINGS)(
        keys=[*store._bump_keys, store.person_key(person_id), store.crop_key(person_id),
              store.emb_key_of(version, person_id), store.info_key_of(version, person_id),
              store.todo_key(version), store.versions_key],
        args=[*store._bump_args(), person_id, version, store.prefix, *args]))


def switch(store: GalleryStore, version: str) -> None:
    """Make ``version`` the one servers answer with; refused unless it is complete."""
    result = int(store.redis.register_script(_SWITCH)(
        keys=[store.versions_key, store.todo_key(version), store.serving_key], args=[version]))
    if result == -1:
        raise UpgradeRefusedError(f"model {version} is not kept by this gallery (run upgrade.py run first)")
    if result > 0:
        raise UpgradeRefusedError(f"model {version} is not complete: {result} person(s) still to embed "
                                  "(run upgrade.py run)", people_to_embed=result)


def drop(store: GalleryStore, version: str, progress: Callable[[int], None] | None = None,
         batch: int = 1000) -> int:
    """Stop keeping ``version`` and delete its embeddings; returns the keys deleted. Refused
    for the serving version, when no serving version is set, or while the serving one is
    incomplete (the old one may still be what some server answers with)."""
    serving = store.redis.get(store.serving_key)
    serving_todo = store.todo_key(serving.decode()) if serving else store.todo_key("")
    result = store.redis.register_script(_UNREGISTER)(
        keys=[store.versions_key, store.todo_key(version), store.serving_key, serving_todo], args=[version]).decode()
    reasons = {
        "no_serving": "no serving version is set: switch to the new model first (upgrade.py run / switch)",
        "serving": f"model {version} is the serving version",
        "serving_incomplete": f"the serving model {serving.decode() if serving else ''} is not complete yet, "
                              f"so servers may still answer with {version}: run upgrade.py run first",
        "not_registered": f"model {version} is not kept by this gallery",
    }
    if result != "ok":
        raise UpgradeRefusedError(f"cannot drop model {version}: {reasons[result]}")
    deleted = 0
    for pattern in (store.emb_key_of(version, "*"), store.info_key_of(version, "*")):
        keys: list[bytes] = []
        for key in store.redis.scan_iter(match=pattern, count=batch):
            keys.append(key)
            if len(keys) >= batch:
                deleted += store.redis.unlink(*keys)
                progress and progress(len(keys))
                keys = []
        if keys:
            deleted += store.redis.unlink(*keys)
            progress and progress(len(keys))
    return deleted

