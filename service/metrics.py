"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

Request counters and latency histograms are accumulated in Redis (one pipelined round trip
per request), not in process memory: gunicorn runs several worker processes and a scrape
reaches only one of them, which would show a random fraction of the traffic. Recording is
best effort; a Redis hiccup never fails a request because of metrics.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterable, Mapping

import redis
from redis import Redis

log = logging.getLogger(__name__)

BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Label values come from fixed sets, so that a client cannot grow the metrics hash (Redis runs
# at noeviction): the route is a URL template (or "unmatched"), the method one of these or "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(**pairs: str) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(str(v))}"' for k, v in pairs.items()) + "}"


def format_value(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Metrics:
    """HTTP request metrics shared by every process of the service through Redis."""

    def __init__(self, redis_conn: Redis, prefix: str) -> None:
        self.redis = redis_conn
        self.key = f"{prefix}:metrics:http"

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request; the bucket index is stored, cumulated at render time."""
        series = f"{method_label(method)}\t{route}\t{status}"
        bucket = next((i for i, edge in enumerate(BUCKETS) if seconds <= edge), len(BUCKETS))
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.hincrby(self.key, f"{series}\tcount", 1)
                pipe.hincrbyfloat(self.key, f"{series}\tsum", seconds)
                pipe.hincrby(self.key, f"{series}\tb{bucket}", 1)
                pipe.execute()
        except redis.RedisError as exc:
            log.debug("metrics not recorded: %s", exc)

    def _read(self) -> dict[tuple[str, str, str], dict[str, float]]:
        series: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
        for field, value in self.redis.hgetall(self.key).items():
            parts = field.decode().split("\t")
            if len(parts) != 4:
                continue
            method, route, status, what = parts
            series[(route, method, status)][what] = float(value)
        return series

    def render(self, gauges: Iterable[tuple[str, str, str, Mapping[str, str], float]]) -> str:
        """The whole exposition: HTTP families (if Redis answers) plus ``gauges``, given as
        (name, type, help, labels, value) in family order."""
        lines: list[str] = []
        try:
            series = self._read()
        except redis.RedisError:
            series = {}
        lines += [
            "# HELP facerec_http_requests_total HTTP requests served, by route template, method and status.",
            "# TYPE facerec_http_requests_total counter",
        ]
        for (route, method, status), values in sorted(series.items()):
            lines.append(f"facerec_http_requests_total{labels(route=route, method=method, status=status)} "
                         f"{format_value(values.get('count', 0))}")
        lines += [
            "# HELP facerec_http_request_duration_seconds Time to answer HTTP requests.",
            "# TYPE facerec_http_request_duration_seconds histogram",
        ]
        for (route, method, status), values in sorted(series.items()):
            cumulative = 0.0
            for i, edge in enumerate(BUCKETS):
                cumulative += values.get(f"b{i}", 0)
                lines.append("facerec_http_request_duration_seconds_bucket"
                             f"{labels(route=route, method=method, status=status, le=format_value(edge))} "
                             f"{format_value(cumulative)}")
            cumulative += values.get(f"b{len(BUCKETS)}", 0)
            base = dict(route=route, method=method, status=status)
            lines.append(f"facerec_http_request_duration_seconds_bucket{labels(**base, le='+Inf')} "
                         f"{format_value(cumulative)}")
            lines.append(f"facerec_http_request_duration_seconds_sum{labels(**base)} "
                         f"{format_value(values.get('sum', 0.0))}")
            lines.append(f"facerec_http_request_duration_seconds_count{labels(**base)} "
                         f"{format_value(cumulative)}")
        seen: set[str] = set()
        for name, kind, help_text, label_pairs, value in gauges:
            if name not in seen:
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} {kind}")
                seen.add(name)
            lines.append(f"{name}{labels(**label_pairs)} {format_value(value)}")
        return "\n".join(lines) + "\n"
