"""Slow clients and floods against the real server, on loopback: does a well-behaved client
still get answers?

1. A private redis-server and gunicorn (``gunicorn.conf.py``, WEB_CONCURRENCY=2), in open mode.
   The well-behaved client and the flooders send different read keys.
2. For each setup -- gunicorn alone, then nginx (``deploy/nginx.conf``) in front of it -- and for
   each load:
   - ``slowloris``: ``--slow`` connections (default 50, with a read key) each sending a JSON
     identify body of 100 kB at one byte every 2 s (after complete headers), held open for the
     whole measurement;
   - ``flood``: ``--flooders`` threads (default 8) posting a 5000x5000 PNG (73 kB, 25 MP) to
     /v1/identify back to back, as fast as answers come (the amplification case: seconds of CPU
     per request);
   a well-behaved client sends GET /health and POST /v1/identify (one face, 230x240 JPEG) in
   turn for ``--seconds``: latency median / p95 / max, and how many took over 1 s or failed.
   For the flood, also what the flooders got (200 / 429 / other).
3. The flood runs twice: with the limits off (``RATE_LIMIT=off``, ``MAX_INFLIGHT`` and
   ``MAX_INFLIGHT_PER_CLIENT`` 1000), as before issue 12, and with the defaults.

    OMP_NUM_THREADS=1 python -m bench.slow_clients --model runs/cpu/model.pt
"""
from __future__ import annotations

import io
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

from . import common
from .service_stack import Stack

# The well-behaved client and the flooders are different clients (keys), as they would be.
GOOD, FLOODER = "good-client-key", "flooder-key"
KEYS = {"ADMIN_API_KEYS": "bench-admin-key", "READ_API_KEYS": f"{GOOD},{FLOODER}"}


def face_jpeg() -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(data.astronaut()[10:250, 110:340])).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def big_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5000, 5000), (128, 128, 128)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


class SlowBodies:
    """``count`` connections that send complete headers, then a body one byte every ``every`` s."""

    def __init__(self, base: str, count: int, every: float = 2.0) -> None:
        host, port = base.split("://", 1)[1].split(":")
        self.addr = (host, int(port))
        self.count, self.every = count, every
        self.socks: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)

    def __enter__(self) -> "SlowBodies":
        head = (b"POST /v1/identify HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                b"X-API-Key: " + FLOODER.encode() + b"\r\nContent-Length: 100000\r\n\r\n{")
        for _ in range(self.count):
            sock = socket.create_connection(self.addr, timeout=5)
            sock.sendall(head)
            self.socks.append(sock)
        self.thread.start()
        time.sleep(1.0)  # let the server take them in
        return self

    def _drip(self) -> None:
        while not self.stop.wait(self.every):
            for sock in self.socks:
                try:
                    sock.send(b" ")
                except OSError:
                    pass

    def alive(self) -> int:
        """Connections the server has not closed (a closed one reads EOF or fails)."""
        n = 0
        for sock in self.socks:
            try:
                sock.setblocking(False)
                n += sock.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                n += 1
            except OSError:
                pass
        return n

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in self.socks:
            sock.close()


class Flood:
    """``count`` threads posting ``body`` to /v1/identify back to back; counts their statuses."""

    def __init__(self, base: str, count: int, body: bytes) -> None:
        self.base, self.body = base, body
        self.statuses: Counter[str] = Counter()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def _run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            try:
                r = session.post(f"{self.base}/v1/identify", files={"image": ("big.png", self.body)}, timeout=60,
                                 headers={"X-API-Key": FLOODER})
                self.statuses[str(r.status_code)] += 1
                if r.status_code == 429:
                    time.sleep(float(r.headers.get("Retry-After", "1")) / 10)  # impatient, not polite
            except requests.RequestException as exc:
                self.statuses[type(exc).__name__] += 1

    def __enter__(self) -> "Flood":
        for t in self.threads:
            t.start()
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(70)


def good_client(base: str, seconds: float, face: bytes) -> dict[str, Any]:
    """GET /health and POST /v1/identify in turn, a new connection each (like a fresh client)."""
    out: dict[str, list[float]] = {"health": [], "identify": []}
    failed: Counter[str] = Counter()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for kind in ("health", "identify"):
            start = time.perf_counter()
            try:
                headers = {"Connection": "close", "X-API-Key": GOOD}
                if kind == "health":
                    r = requests.get(f"{base}/health", timeout=5, headers=headers)
                else:
                    r = requests.post(f"{base}/v1/identify", files={"image": ("face.jpg", face)}, timeout=5,
                                      headers=headers)
                ok = r.status_code == 200
            except requests.RequestException:
                ok = False
            took = time.perf_counter() - start
            if ok:
                out[kind].append(took)
            else:
                failed[kind] += 1
                out[kind].append(5.0)
            time.sleep(0.25)
    return {kind: {**common.stats(v), "over_1s": sum(t > 1.0 for t in v), "failed": failed[kind]}
            for kind, v in out.items()}


def measure(stack: Stack, front: str, load: str, args: Any, face: bytes, png: bytes) -> dict[str, Any]:
    row: dict[str, Any] = {"front": front, "load": load}
    if load == "slowloris":
        with SlowBodies(stack.base[front], args.slow) as slow:
            row["good"] = good_client(stack.base[front], args.seconds, face)
            row["slow_connections_open_at_end"] = slow.alive()
    elif load.startswith("flood"):
        with Flood(stack.base[front], args.flooders, png) as flood:
            row["good"] = good_client(stack.base[front], args.seconds, face)
        row["flooders"] = dict(flood.statuses)
    else:
        row["good"] = good_client(stack.base[front], args.seconds, face)
    print(row, flush=True)
    return row


def main() -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=str(common.DEFAULT_MODEL))
    p.add_argument("--slow", type=int, default=50, help="slow connections")
    p.add_argument("--flooders", type=int, default=8)
    p.add_argument("--seconds", type=float, default=15.0, help="well-behaved client's run per case")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.slow, args.flooders = 5.0, 10, 2
    start = time.perf_counter()
    face, png = face_jpeg(), big_png()
    rows = []
    for limits in ("off", "default"):
        extra = dict(KEYS)
        if limits == "off":
            extra.update(RATE_LIMIT="off", MAX_INFLIGHT="1000", MAX_INFLIGHT_PER_CLIENT="1000")
        with Stack(Path(args.model)) as stack:
            stack.start_redis()
            gunicorn = stack.start_gunicorn(2, args.threads, **extra, TRUSTED_PROXIES="0")
            stack.base = {"gunicorn": gunicorn, "nginx": stack.start_nginx(gunicorn)}
            loads = ["idle", "slowloris", "flood"] if limits == "off" else ["flood"]
            for front in ("gunicorn", "nginx"):
                for load in loads:
                    rows.append({"limits": limits, **measure(stack, front, load, args, face, png)})
    header = ("limits", "front", "load", "health p50 / p95 / max (s)", "health >1s or failed",
              "identify p50 / p95 / max (s)", "identify >1s or failed", "flooders got")
    table = common.markdown_table(header, [
        (r["limits"], r["front"], r["load"],
         " / ".join(f"{r['good']['health'][q]:.2f}" for q in ("median", "p95", "max")),
         f"{r['good']['health']['over_1s']} of {r['good']['health']['n']}",
         " / ".join(f"{r['good']['identify'][q]:.2f}" for q in ("median", "p95", "max")),
         f"{r['good']['identify']['over_1s']} of {r['good']['identify']['n']}",
         ", ".join(f"{k}: {v}" for k, v in sorted(r.get("flooders", {}).items())) or "-") for r in rows])
    return common.finish("slow_clients", args, {"rows": rows}, table, start)


if __name__ == "__main__":
    raise SystemExit(main())
