"""The local gallery of enrolled people, used by the CLI without a server.

Each person has a string id, a name, JSON metadata and a set of image embeddings
keyed by image hash. The FAISS index holds exactly one vector per person that has
images: the normalised mean of those embeddings (:func:`index.vectors.mean_embedding`).
A person with no images stays listed but cannot be matched.

On disk a gallery is a directory::

    gallery.json                 manifest: format, model_version, dim, people, and the
                                 names + SHA-256 of the two data files below
    embeddings-<token>.npz       owner int ids, image hashes, embeddings (no pickles)
    index-<token>.faiss          the FAISS index of person vectors

Every file is written atomically (temp file + ``os.replace``) and the manifest is
written last, so a save is all-or-nothing: until the new manifest lands, readers
keep using the previous data files, which are only deleted one save later.
Single writer per directory; not thread-safe.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from recognizer.atomic import atomic_write, atomic_write_bytes
from recognizer.errors import (
    ConflictError,
    GalleryError,
    InvalidRequestError,
    NotFoundError,
)

from .faiss_index import DEFAULT_NPROBE, Kind, VectorIndex
from .vectors import check_matrix, cosine_to_angle_deg, l2_normalize_rows, mean_embedding

MANIFEST_NAME = "gallery.json"
FORMAT = "face-gallery"
FORMAT_VERSION = 1

_PERSON_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Printable ASCII without spaces: fits hex/base64 digests and stores compactly.
_IMAGE_HASH_RE = re.compile(r"[!-~]{1,256}")
_MAX_NAME_LEN = 256
_DATA_FILE_RE = re.compile(r"(embeddings-[0-9a-f]{1,64}\.npz|index-[0-9a-f]{1,64}\.faiss)")


@dataclass(frozen=True)
class Match:
    """One candidate identity for a query face, best first in search results."""

    person_id: str
    name: str
    cosine: float
    angle_deg: float
    score: float | None = None  # AS-norm score against the gallery's cohort, where there is one


@dataclass(frozen=True)
class PersonInfo:
    """A snapshot of one enrolled person (metadata is a copy, safe to modify)."""

    person_id: str
    name: str
    image_count: int
    metadata: dict[str, Any]
    image_hashes: tuple[str, ...] = ()


def decide(matches: Sequence[Match], threshold: float) -> Literal["match", "unknown"]:
    """``"match"`` iff the best cosine is >= ``threshold``, else ``"unknown"``.

    "unknown" is a real answer: an open-set system must be able to say that the
    face belongs to nobody enrolled rather than return the nearest stranger.
    """
    thr = _check_threshold(threshold)
    best = max((m.cosine for m in matches), default=-math.inf)
    return "match" if best >= thr else "unknown"


@dataclass
class _Person:
    name: str
    metadata: dict[str, Any]
    int_id: int
    images: dict[str, np.ndarray] = field(default_factory=dict)

    def info(self, person_id: str) -> PersonInfo:
        return PersonInfo(
            person_id=person_id,
            name=self.name,
            image_count=len(self.images),
            metadata=json.loads(json.dumps(self.metadata)),
            image_hashes=tuple(self.images),
        )


class Gallery:
    """Enrolled people and their FAISS index; see the module docstring for the layout.

    ``model_version`` names the embedding model: embeddings of different models are
    not comparable, so a saved gallery refuses to load under another version.
    """

    def __init__(self, model_version: str, dim: int = 512) -> None:
        if not isinstance(model_version, str) or not model_version.strip():
            raise InvalidRequestError("model_version must be a non-empty string")
        self._model_version = model_version
        self._index = VectorIndex(dim)
        self._dim = self._index.dim
        self._people: dict[str, _Person] = {}
        self._by_int: dict[int, str] = {}
        # FAISS ids are never reused, so a stale id can never point at someone else.
        self._next_int_id = 0

    # -- basic properties -------------------------------------------------------------

    @property
    def model_version(self) -> str:
        return self._model_version

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def index(self) -> VectorIndex:
        """The underlying index (one mean vector per person with images)."""
        return self._index

    def __len__(self) -> int:
        return len(self._people)

    def __contains__(self, person_id: object) -> bool:
        return isinstance(person_id, str) and person_id in self._people

    # -- people -----------------------------------------------------------------------

    def add_person(
        self,
        name: str,
        person_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Enrol a person (no images yet) and return their id (uuid4 hex if not given).

        Raises ConflictError if ``person_id`` is taken.
        """
        clean_name = _check_name(name)
        meta = _check_metadata(metadata)
        if person_id is None:
            person_id = uuid.uuid4().hex
        else:
            _check_person_id(person_id)
            if person_id in self._people:
                raise ConflictError(f"person {person_id!r} already exists", person_id=person_id)
        int_id = self._next_int_id
        self._next_int_id += 1
        self._people[person_id] = _Person(clean_name, meta, int_id)
        self._by_int[int_id] = person_id
        return person_id

    def remove_person(self, person_id: str) -> None:
        """Forget a person and their images; they stop matching immediately."""
        person = self._get(person_id)
        if person.int_id in self._index:
            self._index.remove(person.int_id)
        del self._by_int[person.int_id]
        del self._people[person_id]

    def people(self) -> list[PersonInfo]:
        """Everyone enrolled, in enrolment order (including people with no images)."""
        return [p.info(pid) for pid, p in self._people.items()]

    def get_person(self, person_id: str) -> PersonInfo:
        """One person's snapshot; NotFoundError if unknown."""
        return self._get(person_id).info(person_id)

    def find_by_name(self, name: str) -> list[PersonInfo]:
        """Everyone whose name equals ``name`` ignoring case and outer spaces.

        Names are not unique (two people can share one), hence a list.
        """
        if not isinstance(name, str):
            raise InvalidRequestError("name must be a string")
        key = name.strip().casefold()
        return [p.info(pid) for pid, p in self._people.items() if p.name.casefold() == key]

    def person_vector(self, person_id: str) -> np.ndarray | None:
        """The person's vector as stored in the index, or None if they have no images."""
        person = self._get(person_id)
        if person.int_id not in self._index:
            return None
        return self._index.reconstruct(person.int_id)

    # -- images -----------------------------------------------------------------------

    def add_images(self, person_id: str, images: Mapping[str, Any]) -> int:
        """Add ``{image_hash: embedding}`` to a person; return how many were new.

        A hash the person already has is skipped (the same photo enrolled twice must
        not weigh twice). Embeddings are re-normalised on the way in. Only this
        person's mean is recomputed and only their index entry is replaced. Nothing
        changes if any input is invalid.
        """
        person = self._get(person_id)
        if not isinstance(images, Mapping):
            raise InvalidRequestError("images must be a mapping of image hash -> embedding")
        new: dict[str, np.ndarray] = {}
        for image_hash, vec in images.items():
            _check_image_hash(image_hash)
            row = check_matrix(vec, self._dim, f"embedding for image {image_hash!r}")
            if row.shape[0] != 1:
                raise InvalidRequestError(
                    f"embedding for image {image_hash!r}: expected one vector, got {row.shape[0]}"
                )
            if image_hash in person.images or image_hash in new:
                continue
            unit = l2_normalize_rows(row, f"embedding for image {image_hash!r}")[0]
            unit.setflags(write=False)
            new[image_hash] = unit
        if not new:
            return 0
        vectors = np.stack([*person.images.values(), *new.values()])
        self._index.upsert(person.int_id, mean_embedding(vectors))
        person.images.update(new)
        return len(new)

    def remove_image(self, person_id: str, image_hash: str) -> None:
        """Drop one image; the person's vector is recomputed (or removed if none left)."""
        person = self._get(person_id)
        if not isinstance(image_hash, str) or image_hash not in person.images:
            raise NotFoundError(
                f"person {person_id!r} has no image {image_hash!r}",
                person_id=person_id,
                image_hash=image_hash,
            )
        rest = [v for h, v in person.images.items() if h != image_hash]
        if rest:
            self._index.upsert(person.int_id, mean_embedding(np.stack(rest)))
        else:
            self._index.remove(person.int_id)
        del person.images[image_hash]

    # -- search -----------------------------------------------------------------------

    def search(
        self,
        queries: Any,
        k: int = 5,
        *,
        threshold: float | None = None,
    ) -> list[list[Match]]:
        """Up to ``k`` nearest people for each query embedding, best first.

        ``queries`` is (n, d) or (d,); the result always has one list per query.
        Queries are normalised here so that scores are cosines. With ``threshold``,
        candidates below it are dropped, so an empty list means "unknown".
        """
        q = l2_normalize_rows(check_matrix(queries, self._dim, "queries"), "queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidRequestError(f"k must be a positive integer, got {k!r}")
        thr = None if threshold is None else _check_threshold(threshold)
        size = len(self._index)
        if size == 0:
            return [[] for _ in range(q.shape[0])]
        cosines, ids = self._index.search(q, min(int(k), size))
        results: list[list[Match]] = []
        for row_cos, row_ids in zip(cosines.tolist(), ids.tolist()):
            matches: list[Match] = []
            for cos, int_id in zip(row_cos, row_ids):
                if int_id < 0:
                    continue
                cos = min(1.0, max(-1.0, cos))
                if thr is not None and cos < thr:
                    break  # sorted best first
                pid = self._by_int[int_id]
                matches.append(Match(pid, self._people[pid].name, cos, cosine_to_angle_deg(cos)))
            results.append(matches)
        return results

    def rebuild_index(self, kind: Kind = "auto", nprobe: int = DEFAULT_NPROBE) -> None:
        """Rebuild the index from the current person vectors (e.g. to switch to IVF
        once the gallery has grown); the vectors themselves are kept bit for bit."""
        ids = self._index.ids()
        vecs = (
            np.stack([self._index.reconstruct(int(i)) for i in ids])
            if ids.size
            else np.zeros((0, self._dim), np.float32)
        )
        self._index = VectorIndex.build(ids, vecs, kind=kind, dim=self._dim, nprobe=nprobe)

    # -- persistence ------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the gallery into ``directory`` (created if needed), all-or-nothing."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        previous = _referenced_files(d)
        token = uuid.uuid4().hex[:16]
        emb_name, idx_name = f"embeddings-{token}.npz", f"index-{token}.faiss"

        owners: list[int] = []
        hashes: list[str] = []
        rows: list[np.ndarray] = []
        for person in self._people.values():
            for image_hash, vec in person.images.items():
                owners.append(person.int_id)
                hashes.append(image_hash)
                rows.append(vec)
        arrays = {
            "owner": np.array(owners, dtype=np.int64),
            "hashes": np.array([h.encode("ascii") for h in hashes], dtype=np.bytes_)
            if hashes
            else np.zeros(0, dtype="S1"),
            "vectors": np.stack(rows) if rows else np.zeros((0, self._dim), np.float32),
        }

        def write_npz(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        atomic_write(d / emb_name, write_npz)
        self._index.save(d / idx_name)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_version": self._model_version,
            "dim": self._dim,
            "next_int_id": self._next_int_id,
            "embeddings": {"file": emb_name, "sha256": _sha256(d / emb_name)},
            "index": {"file": idx_name, "sha256": _sha256(d / idx_name)},
            "people": [
                {"person_id": pid, "name": p.name, "metadata": p.metadata, "int_id": p.int_id}
                for pid, p in self._people.items()
            ],
        }
        data = json.dumps(manifest, ensure_ascii=False, indent=1).encode("utf-8")
        atomic_write_bytes(d / MANIFEST_NAME, data)
        # Keep the previous generation for readers that opened the old manifest.
        keep = {emb_name, idx_name, *previous}
        for f in d.iterdir():
            stale = _DATA_FILE_RE.fullmatch(f.name) and f.name not in keep
            leftover = f.name.startswith((".embeddings-", ".index-", f".{MANIFEST_NAME}."))
            if stale or (leftover and f.name.endswith(".tmp")):
                try:
                    f.unlink()
                except OSError:
                    pass

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        model_version: str,
        *,
        dim: int | None = None,
    ) -> "Gallery":
        """Load a saved gallery, refusing one made by another model version.

        Raises GalleryError if the directory holds no gallery, if its model version
        (or ``dim``, when given) differs, or if any file is corrupt or truncated.
        """
        d = Path(directory)
        manifest_path = d / MANIFEST_NAME
        if not manifest_path.is_file():
            raise GalleryError(
                f"no gallery at {d} (missing {MANIFEST_NAME}); "
                "use Gallery.open_or_create to start a new one",
                path=str(d),
            )
        try:
            manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise GalleryError(
                f"gallery manifest {manifest_path} is corrupt or unreadable: {exc}",
                path=str(manifest_path),
            ) from exc
        try:
            return cls._from_manifest(d, manifest, model_version, dim)
        except GalleryError:
            raise
        except Exception as exc:  # any parse failure of untrusted files is "corrupt"
            raise GalleryError(
                f"gallery at {d} is corrupt: {type(exc).__name__}: {exc}", path=str(d)
            ) from exc

    @classmethod
    def open_or_create(
        cls,
        directory: str | os.PathLike[str],
        model_version: str,
        dim: int = 512,
    ) -> "Gallery":
        """Load the gallery in ``directory``, or return a new empty one if there is none.

        Only a *missing* gallery becomes empty; a corrupt or incompatible one still
        raises GalleryError, so enrolments are never silently thrown away.
        """
        if (Path(directory) / MANIFEST_NAME).exists():
            return cls.load(directory, model_version, dim=dim)
        return cls(model_version, dim)

    @classmethod
    def _from_manifest(
        cls, d: Path, manifest: Any, model_version: str, dim: int | None
    ) -> "Gallery":
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise GalleryError(f"{d / MANIFEST_NAME} is not a face gallery manifest", path=str(d))
        if manifest.get("format_version") != FORMAT_VERSION:
            raise GalleryError(
                f"gallery at {d} has format version {manifest.get('format_version')!r}; "
                f"this code reads version {FORMAT_VERSION}",
                path=str(d),
            )
        found = manifest["model_version"]
        if found != model_version:
            raise GalleryError(
                f"gallery at {d} was built with model version {found!r}, but the current "
                f"model is {model_version!r}; embeddings of different models are not "
                "comparable, so re-enrol the gallery with the current model",
                path=str(d),
                gallery_model_version=found,
                model_version=model_version,
            )
        gdim = manifest["dim"]
        if isinstance(gdim, bool) or not isinstance(gdim, int) or gdim <= 0:
            raise ValueError(f"bad dim {gdim!r}")
        if dim is not None and dim != gdim:
            raise GalleryError(
                f"gallery at {d} holds {gdim}-d embeddings, expected {dim}-d",
                path=str(d),
                gallery_dim=gdim,
                dim=dim,
            )

        gallery = cls(model_version, gdim)
        next_int_id = manifest["next_int_id"]
        if isinstance(next_int_id, bool) or not isinstance(next_int_id, int) or next_int_id < 0:
            raise ValueError(f"bad next_int_id {next_int_id!r}")
        for entry in manifest["people"]:
            pid, int_id = entry["person_id"], entry["int_id"]
            _check_person_id(pid)
            if isinstance(int_id, bool) or not isinstance(int_id, int) or not 0 <= int_id < next_int_id:
                raise ValueError(f"bad int id {int_id!r} for person {pid!r}")
            if pid in gallery._people or int_id in gallery._by_int:
                raise ValueError(f"duplicate person {pid!r} / int id {int_id}")
            gallery._people[pid] = _Person(
                _check_name(entry["name"]), _check_metadata(entry["metadata"]), int_id
            )
            gallery._by_int[int_id] = pid
        gallery._next_int_id = next_int_id

        emb_path = _verified_data_file(d, manifest["embeddings"])
        with np.load(emb_path, allow_pickle=False) as npz:
            owners, hashes, vectors = npz["owner"], npz["hashes"], npz["vectors"]
        m = owners.shape[0]
        if (
            owners.shape != (m,)
            or owners.dtype != np.int64
            or hashes.shape != (m,)
            or hashes.dtype.kind != "S"
            or vectors.shape != (m, gdim)
            or vectors.dtype != np.float32
            or not np.all(np.isfinite(vectors))
        ):
            raise ValueError("embeddings arrays have the wrong shape or dtype")
        vectors.setflags(write=False)
        for i, (owner, raw_hash) in enumerate(zip(owners.tolist(), hashes.tolist())):
            image_hash = raw_hash.decode("ascii")
            _check_image_hash(image_hash)
            person = gallery._people[gallery._by_int[owner]]
            if image_hash in person.images:
                raise ValueError(f"image {image_hash!r} stored twice")
            person.images[image_hash] = vectors[i]

        index = VectorIndex.load(_verified_data_file(d, manifest["index"]))
        expected = {p.int_id for p in gallery._people.values() if p.images}
        if index.dim != gdim or set(index.ids().tolist()) != expected:
            raise GalleryError(
                f"gallery at {d} is inconsistent: its index does not hold exactly one "
                "vector per person with images",
                path=str(d),
            )
        gallery._index = index
        return gallery

    # -- helpers ----------------------------------------------------------------------

    def _get(self, person_id: str) -> _Person:
        if not isinstance(person_id, str) or person_id not in self._people:
            raise NotFoundError(f"no person with id {person_id!r}", person_id=person_id)
        return self._people[person_id]


def _check_person_id(person_id: Any) -> None:
    if not isinstance(person_id, str) or not _PERSON_ID_RE.fullmatch(person_id):
        raise InvalidRequestError(
            "person_id must be 1-128 characters of letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit; got {person_id!r}"
        )


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequestError("name must be a non-empty string")
    name = name.strip()
    if len(name) > _MAX_NAME_LEN or any(ord(c) < 32 for c in name):
        raise InvalidRequestError(
            f"name must be at most {_MAX_NAME_LEN} characters, without control characters"
        )
    return name


def _check_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise InvalidRequestError("metadata must be a mapping with string keys")
    try:
        return json.loads(json.dumps(dict(metadata), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"metadata must be JSON-serialisable: {exc}") from None


def _check_image_hash(image_hash: Any) -> None:
    if not isinstance(image_hash, str) or not _IMAGE_HASH_RE.fullmatch(image_hash):
        raise InvalidRequestError(
            f"image hash must be 1-256 printable ASCII characters without spaces, got {image_hash!r}"
        )


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise InvalidRequestError(f"threshold must be a number, got {threshold!r}")
    thr = float(threshold)
    if not math.isfinite(thr):
        raise InvalidRequestError(f"threshold must be finite, got {threshold!r}")
    return thr


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified_data_file(d: Path, entry: Any) -> Path:
    """The data file named in the manifest, after checking its name and checksum.

    The checksum turns truncation or bit rot into a clear GalleryError before numpy
    or FAISS parse the bytes.
    """
    name, digest = entry["file"], entry["sha256"]
    if not isinstance(name, str) or not _DATA_FILE_RE.fullmatch(name):
        raise ValueError(f"bad data file name {name!r}")
    path = d / name
    if not path.is_file():
        raise GalleryError(f"gallery file {path} is missing", path=str(path))
    if _sha256(path) != digest:
        raise GalleryError(
            f"gallery file {path} is corrupt or truncated (checksum mismatch)", path=str(path)
        )
    return path


def _referenced_files(d: Path) -> set[str]:
    """Data files named by the current manifest, if it is readable."""
    try:
        manifest = json.loads((d / MANIFEST_NAME).read_text("utf-8"))
        return {str(manifest[key]["file"]) for key in ("embeddings", "index")}
    except Exception:
        return set()


__all__ = ["Gallery", "Match", "PersonInfo", "decide"]
