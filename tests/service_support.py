"""Helpers shared by the service tests (images, in-process workers, Redis snapshots, a
Prometheus text parser). Plain functions; the fixtures live in conftest.py."""
from __future__ import annotations

import base64
import io
import re
from typing import Any

import numpy as np
from PIL import Image
from rq.timeouts import TimerDeathPenalty

from service.rqworker import EnrollWorker

PREFIX = "fr"


def unit_vector(seed: int, dim: int) -> np.ndarray:
    """A seeded random unit vector (float32): a stand-in embedding for gallery tests."""
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def encode(arr: np.ndarray, fmt: str = "JPEG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def head_crop(astronaut: np.ndarray) -> np.ndarray:
    """The astronaut's head and shoulders (230x240): same face, a quarter of the pixels, so
    every detection in the tests is cheap."""
    return np.ascontiguousarray(astronaut[10:250, 110:340])


def altered(arr: np.ndarray, scale: float = 0.85, quality: int = 70, brightness: float = 1.0) -> bytes:
    """A resized, re-compressed (optionally brightened) copy: new bytes, same face."""
    img = Image.fromarray(arr)
    img = img.resize((int(img.width * scale), int(img.height * scale)), Image.BILINEAR)
    out = np.clip(np.asarray(img).astype(np.float32) * brightness, 0, 255).astype(np.uint8)
    return encode(out, quality=quality)


class InProcessWorker(EnrollWorker):
    """The service's worker (no fork, JSON jobs), usable from any thread: no signal handlers,
    and job timeouts by timer instead of SIGALRM (which only the main thread may use)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


def run_worker(connection, queues=("enroll",), name: str | None = None) -> bool:
    """Work the queues until they are empty; True if a job ran."""
    worker = InProcessWorker(list(queues), connection=connection, name=name)
    return worker.work(burst=True, logging_level="WARNING")


def gallery_snapshot(client, prefix: str = PREFIX) -> dict[bytes, bytes]:
    """Every key of the service except request counters, with its serialized value: equal snapshots
    mean nothing stored changed. RQ's keys are included too (nothing may be queued)."""
    counters = (f"{prefix}:metrics:".encode(), b"LIMITS:")  # request metrics, rate-limit windows
    keys = [k for k in client.keys("*") if not k.startswith(counters)]
    return {k: client.dump(k) for k in sorted(keys)}


_SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)(?: (?P<ts>-?\d+))?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_prometheus(text: str) -> dict[str, dict[str, Any]]:
    """A strict little parser of the text exposition format 0.0.4: returns
    {family: {"type", "help", "samples": [(name, labels, value)]}} and raises AssertionError
    on anything malformed (unknown sample family, TYPE after samples, bad labels or values,
    inconsistent histograms)."""
    assert text.endswith("\n"), "exposition must end with a newline"
    families: dict[str, dict[str, Any]] = {}
    for lineno, line in enumerate(text.split("\n")[:-1], 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                fam = families.setdefault(parts[2], {"type": None, "help": None, "samples": []})
                if parts[1] == "TYPE":
                    assert fam["type"] is None, f"line {lineno}: second TYPE for {parts[2]}"
                    assert not fam["samples"], f"line {lineno}: TYPE after samples of {parts[2]}"
                    assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), line
                    fam["type"] = parts[3]
                else:
                    fam["help"] = parts[3] if len(parts) > 3 else ""
            continue
        m = _SAMPLE.match(line)
        assert m, f"line {lineno}: not a sample: {line!r}"
        name, raw_labels, raw_value = m.group("name"), m.group("labels"), m.group("value")
        labels: dict[str, str] = {}
        if raw_labels:
            pos = 0
            while pos < len(raw_labels):
                lm = _LABEL.match(raw_labels, pos)
                assert lm, f"line {lineno}: bad labels {raw_labels!r}"
                assert lm.group(1) not in labels, f"line {lineno}: duplicate label"
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
        value = float(raw_value.replace("+Inf", "inf").replace("-Inf", "-inf"))
        family = name
        for suffix in ("_bucket", "_sum", "_count", "_total"):
            if name.endswith(suffix) and name[: -len(suffix)] in families:
                family = name[: -len(suffix)]
        if family not in families:
            family = name
        assert family in families and families[family]["type"], f"line {lineno}: sample {name} before its TYPE"
        families[family]["samples"].append((name, labels, value))
    for fam_name, fam in families.items():
        if fam["type"] == "histogram":
            series: dict[tuple, list] = {}
            for name, labels, value in fam["samples"]:
                key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
                series.setdefault(key, []).append((name, labels, value))
            for key, samples in series.items():
                buckets = [(float(lb["le"].replace("+Inf", "inf")), v) for n, lb, v in samples
                           if n.endswith("_bucket")]
                assert buckets and buckets[-1][0] == float("inf"), f"{fam_name}: no +Inf bucket"
                assert [b for b, _ in buckets] == sorted(b for b, _ in buckets), f"{fam_name}: le not sorted"
                counts = [v for _, v in buckets]
                assert counts == sorted(counts), f"{fam_name}: buckets not cumulative"
                count = [v for n, _, v in samples if n.endswith("_count")]
                assert count == [counts[-1]], f"{fam_name}: _count != +Inf bucket"
    return families


def redis_values(client) -> list[tuple[bytes, bytes]]:
    """(key, blob) for every key of the database (SCAN, every key type) and every piece of its
    value: the key name, each string, hash field and value, list item, set and sorted-set
    member, stream field and value. Each blob is also given zlib-inflated and base64-decoded
    when it decodes (RQ keeps a job's arguments as zlib'd pickles and results as base64), so
    a search sees what is inside. DUMP is not used for searching: its RDB encoding may
    LZF-compress a string and hide what it holds."""
    import base64
    import binascii
    import zlib

    def unpacked(blob: bytes, depth: int = 0):
        yield blob
        if depth >= 2 or len(blob) < 8:
            return
        try:
            yield from unpacked(zlib.decompress(blob), depth + 1)
        except zlib.error:
            pass
        try:
            decoded = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            return
        yield from unpacked(decoded, depth + 1)

    out: list[tuple[bytes, bytes]] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            parts = [client.get(key)]
        elif kind == "hash":
            parts = [x for kv in client.hgetall(key).items() for x in kv]
        elif kind == "list":
            parts = client.lrange(key, 0, -1)
        elif kind == "set":
            parts = list(client.smembers(key))
        elif kind == "zset":
            parts = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            parts = [x for _, fields in client.xrange(key) for kv in fields.items() for x in kv]
        else:  # pragma: no cover - a type this service never writes
            raise AssertionError(f"unexpected Redis type {kind} at {key!r}")
        for part in [key, *parts]:
            if part is not None:
                out.extend((key, blob) for blob in unpacked(part))
    return out


def where_in_redis(client, needles: dict[str, bytes]) -> dict[str, set[bytes]]:
    """For each named needle, the keys whose name or value contains it (see redis_values)."""
    values = redis_values(client)
    return {name: {key for key, blob in values if needle in blob} for name, needle in needles.items()}
