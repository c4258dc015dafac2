"""The production service as subprocesses, for the HTTP benchmarks: a private redis-server, gunicorn
with ``gunicorn.conf.py`` and ``python worker.py`` workers, each on a free loopback port.

Why subprocesses and not the in-process app: the numbers must include what production pays
(gunicorn's gthread workers, HTTP parsing, the model loaded after the fork, Redis round trips).
Every process is started in its own session and :class:`Stack` stops all of them on exit,
including on errors and SIGTERM/SIGINT: terminate, wait, then SIGKILL the process group (a killed
gunicorn master or RQ worker must not leave its forked children behind).
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import numpy as np
import redis
import requests
from PIL import Image

from .common import ROOT

# Keys would put the server in keyed mode; the benchmark talks to an open, private server.
_DROPPED_ENV = ("ADMIN_API_KEYS", "READ_API_KEYS", "ADMIN_API_KEY", "READ_API_KEY", "REDIS_URL", "GUNICORN_BIND")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """Owns every subprocess it starts and stops them all (newest first) on ``close``.

    Use as a context manager; SIGTERM is turned into SystemExit while it is open so that the
    ``finally`` clean-up also runs when the benchmark itself is terminated.
    """

    def __init__(self, model: Path, keep_logs: bool = False) -> None:
        self.model = Path(model).resolve()
        self.workdir = Path(tempfile.mkdtemp(prefix="facerec-bench-"))
        self.keep_logs = keep_logs
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.redis_port = 0
        self._old_sigterm = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "Stack":
        self._old_sigterm = signal.signal(signal.SIGTERM, _raise_exit)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(failed=kind is not None)

    def close(self, failed: bool = False) -> None:
        while self.procs:
            name, proc = self.procs.pop()
            try:
                stop_process(proc, name)
            except Exception as exc:  # noqa: BLE001 - one failure must not leave the others running
                print(f"stopping {name} failed: {exc!r}", file=sys.stderr)
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        if failed or self.keep_logs:
            print(f"subprocess logs kept in {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()  # the child has its own descriptor
        self.procs.append((name, proc))
        return proc

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, name: str) -> None:
        """Stop one process early (e.g. the server before in-process measurements)."""
        for i, (n, proc) in enumerate(self.procs):
            if n == name:
                del self.procs[i]
                stop_process(proc, name)
                return

    # -- services ----------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start_redis(self, persistent: bool = False) -> redis.Redis:
        """A redis-server on a free port (the same port again after :meth:`kill_redis`);
        ``persistent``: deploy/redis.conf's AOF, fsynced on every write, else no persistence.
        Returns a client once it answers."""
        self.redis_port = self.redis_port or free_port()
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        durability = (["--appendfsync", "always"] if persistent else ["--save", "", "--appendonly", "no"])
        conf = [str(ROOT / "deploy" / "redis.conf")] if persistent else []
        proc = self._spawn("redis", [exe, *conf, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                     "--dir", str(self.workdir), *durability, "--daemonize", "no"])
        client = redis.Redis(port=self.redis_port, socket_connect_timeout=0.5)
        self._wait_ready("redis", proc, client.ping, redis.ConnectionError)
        return client

    def _wait_ready(self, name: str, proc: subprocess.Popen, ready, errors: type[Exception] | tuple,
                    timeout: float = 20.0) -> None:
        """Until ``ready()`` is true (``errors`` count as not yet); raises with the log tail if the
        process exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except errors:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{self.log_tail(name)}")
            time.sleep(0.05)

    def kill_redis(self) -> None:
        """SIGKILL the redis-server: a crash, nothing saved at exit."""
        for i, (name, proc) in enumerate(self.procs):
            if name == "redis":
                del self.procs[i]
                proc.kill()
                proc.wait(10)
                return

    def process(self, name: str) -> subprocess.Popen:
        return next(proc for n, proc in self.procs if n == name)

    def service_env(self, torch_threads: int, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        env.update(REDIS_URL=self.redis_url, MODEL_PATH=str(self.model), TORCH_THREADS=str(torch_threads),
                   OMP_NUM_THREADS=str(torch_threads), **extra)
        return env

    def start_gunicorn(self, web_concurrency: int, torch_threads: int, timeout: float = 300.0,
                       name: str = "gunicorn", **extra: str) -> str:
        """gunicorn -c gunicorn.conf.py on a free port (``extra`` settings); returns the base URL
        once every worker process has answered /health (each loads the model after the fork).
        Give a second server of the same stack another ``name`` (its log and :meth:`stop`)."""
        port = free_port()
        env = self.service_env(torch_threads, WEB_CONCURRENCY=str(web_concurrency),
                               GUNICORN_BIND=f"127.0.0.1:{port}", **extra)
        proc = self._spawn(name, [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], env)
        base = f"http://127.0.0.1:{port}"
        pids: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(pids) < web_concurrency:  # a new connection each time: keep-alive would stick to one worker
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn not ready ({len(pids)}/{web_concurrency} workers):\n"
                                   f"{self.log_tail(name)}")
            try:
                key = {"X-API-Key": extra["READ_API_KEYS"].split(",")[0]} if extra.get("READ_API_KEYS") else {}
                r = requests.get(f"{base}/health", timeout=5, headers={"Connection": "close", **key})
                if r.status_code == 200:
                    pids.add(r.json()["pid"])
            except requests.RequestException:
                pass
            time.sleep(0.05)
        return base

    def start_nginx(self, upstream: str) -> str:
        """nginx with deploy/nginx.conf in front of ``upstream`` (a base URL) on a free port;
        returns its base URL once it proxies /health."""
        port = free_port()
        run = self.workdir / "nginx"
        run.mkdir(exist_ok=True)
        conf = (ROOT / "deploy" / "nginx.conf").read_text().replace("${LISTEN}", f"127.0.0.1:{port}") \
            .replace("${UPSTREAM}", upstream.split("://", 1)[1]).replace("${RUNDIR}", str(run))
        (run / "nginx.conf").write_text(conf)
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        proc = self._spawn("nginx", [exe, "-c", str(run / "nginx.conf"), "-g", "daemon off;"])
        base = f"http://127.0.0.1:{port}"
        self._wait_ready("nginx", proc, lambda: requests.get(f"{base}/health", timeout=5).status_code == 200,
                         requests.RequestException)
        return base

    def start_worker(self, name: str, torch_threads: int = 1, timeout: float = 300.0, **extra: str) -> None:
        """``python worker.py`` (TORCH_THREADS per worker, ``extra`` settings); returns once it has
        registered with RQ, which it does only after loading the model, so no model load overlaps
        a measurement."""
        from rq import Worker

        proc = self._spawn(name, [sys.executable, "worker.py", "--name", name],
                           self.service_env(torch_threads, **extra))
        conn = redis.Redis(port=self.redis_port)
        deadline = time.monotonic() + timeout
        try:
            while name not in {w.name for w in Worker.all(connection=conn)}:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {name} did not start:\n{self.log_tail(name)}")
                time.sleep(0.1)
        finally:
            conn.close()


def stop_process(proc: subprocess.Popen, name: str, grace: float = 20.0) -> None:
    """SIGTERM (gunicorn and RQ shut down gracefully), then SIGKILL whatever is left of the
    process group (forked gunicorn workers, the RQ scheduler). The leader is not reaped until
    after that, so the group id cannot have been reused by an unrelated process."""
    if proc.returncode is not None:  # already reaped: its group id is no longer ours to signal
        return
    os.kill(proc.pid, signal.SIGTERM)  # not proc.terminate(): it may reap the leader (a killed one) first
    deadline = time.monotonic() + grace
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() > deadline:
            print(f"{name} did not stop in {grace:.0f} s; killing it", file=sys.stderr)
            break
        time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(10)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def jpeg_fit(path: Path, max_side: int) -> bytes:
    """The file's bytes, or (when its longer side is over ``max_side`` > 0) a downscaled JPEG
    re-encoded at quality 90, as a client app would send."""
    data = path.read_bytes()
    if not max_side:
        return data
    img = Image.open(io.BytesIO(data))
    if max(img.size) <= max_side:
        return data
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img).convert("RGB")
    scale = max_side / max(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def celeba_identities(celeba: Path) -> dict[str, list[Path]]:
    """identity -> its image paths, from ``identity_CelebA.txt`` (file order)."""
    groups: dict[str, list[Path]] = {}
    for line in (celeba / "identity_CelebA.txt").read_text().split("\n"):
        parts = line.split()
        if len(parts) == 2:
            groups.setdefault(parts[1], []).append(celeba / "img_align_celeba" / parts[0])
    return groups


def percentile(values: list[float] | np.ndarray, q: float) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else float("nan")
