"""Shared fixtures: a tiny trained model (trained here, in seconds, on synthetic faces) and
the optional real-face data folder from ``FACE_DATA``."""
from __future__ import annotations

import os
from pathlib import Path

# One torch thread per test process unless told otherwise: on 2 cores, two processes that each
# run 2 OpenMP threads slow each other down twenty-fold (spinning barriers), and the suites here
# start servers and workers beside the test process. Subprocesses inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("TEST_TORCH_THREADS", "1"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


from resources import face_data, pytest_runtest_makereport, pytest_runtest_setup  # noqa: E402,F401 - hooks

# Skipped without FACE_DATA, except in CI while the data is there (see resources.py).
requires_face_data = pytest.mark.face_data


def synthetic_face(identity: int, variant: int, size=(178, 218)) -> Image.Image:
    """A crude face-like drawing whose shapes and colours depend on the identity and whose
    small shifts and brightness depend on the variant: enough signal for a network to learn
    identities in a few steps, for plumbing tests only."""
    rng = np.random.default_rng(identity * 1000 + variant)
    base = np.random.default_rng(identity)
    skin = tuple(int(c) for c in base.integers(80, 230, 3))
    img = Image.new("RGB", size, tuple(int(c) for c in base.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    dx, dy = rng.integers(-3, 4, 2)
    cx, cy = 89 + dx, 130 + dy
    draw.ellipse([cx - 40, cy - 55, cx + 40, cy + 55], fill=skin)
    eye = tuple(int(c) for c in base.integers(0, 120, 3))
    spread = int(base.integers(12, 22))
    for sx in (-spread, spread):
        draw.ellipse([cx + sx - 7, cy - 22, cx + sx + 7, cy - 12], fill=eye)
    mouth_w = int(base.integers(10, 28))
    draw.rectangle([cx - mouth_w, cy + 22, cx + mouth_w, cy + 28 + int(base.integers(0, 8))],
                   fill=tuple(int(c) for c in base.integers(100, 255, 3)))
    arr = np.asarray(img).astype(np.float32) * rng.uniform(0.85, 1.15) + rng.normal(0, 6, (size[1], size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_synthetic_celeba(root: Path, identities: int = 8, per_identity: int = 10) -> Path:
    """A dataset in CelebA's own layout (img_align_celeba/ + identity_CelebA.txt)."""
    images = root / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    n = 0
    for ident in range(1, identities + 1):
        for variant in range(per_identity):
            n += 1
            name = f"{n:06d}.jpg"
            synthetic_face(ident, variant).save(images / name, quality=95)
            lines.append(f"{name} {ident}")
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def synthetic_celeba(tmp_path_factory) -> Path:
    return make_synthetic_celeba(tmp_path_factory.mktemp("synthetic_celeba"))


@pytest.fixture(scope="session")
def tiny_model(synthetic_celeba, tmp_path_factory) -> Path:
    """A model artifact from the trainer's ``tiny`` config (a few seconds on 2 cores)."""
    from trainer.configs import get_config
    from trainer.fit import Trainer

    out = tmp_path_factory.mktemp("tiny_run")
    Trainer(synthetic_celeba, get_config("tiny"), out, cache_dir=None).fit()
    return out / "model.pt"


@pytest.fixture(scope="session")
def recognizer(tiny_model):
    from recognizer import Recognizer

    return Recognizer(tiny_model)


@pytest.fixture(scope="session")
def shipped():
    """The release model in models/, loaded once: real-face behaviour without training anything."""
    from recognizer import Recognizer

    return Recognizer()  # no argument: MODEL_PATH, else the shipped model


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A real photograph with one face that ships with scikit-image."""
    from skimage import data

    return data.astronaut()


# -- service fixtures: a private redis-server, the model once, flushed per test -------------------

class RedisServer:
    """A redis-server of our own on a free port (never the shared one on 6379)."""

    def __init__(self, workdir: Path, port: int | None = None, args: tuple[str, ...] = (),
                 config_file: Path | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.args = args
        self.config_file = config_file
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        import shutil
        import subprocess
        import time

        import redis

        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        cmd = [exe] + ([str(self.config_file)] if self.config_file else []) + [
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--daemonize", "no", "--logfile", str(self.workdir / "redis.log"), *self.args]
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "redis.stdout", "ab") as out:  # config errors go to stdout
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                logs = [self.workdir / "redis.stdout", self.workdir / "redis.log"]
                text = "".join(p.read_text()[-2000:] for p in logs if p.exists())
                raise RuntimeError(f"redis-server did not start: {text}")
            time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to save anything at exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def client(self, **kwargs):
        import redis

        return redis.Redis(port=self.port, **kwargs)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """Session redis-server without persistence (--save "" --appendonly no)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), args=("--save", "", "--appendonly", "no")).start()
    yield server
    server.kill()


@pytest.fixture
def redis_db(redis_server):
    """A client of the session server; the database is flushed before and after each test."""
    client = redis_server.client()
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def service_recognizer(tiny_model):
    """The service's own recognizer (built as the server and the worker build it), loaded once."""
    from service.config import load_config
    from service.jobs import build_recognizer

    threads = int(os.environ["OMP_NUM_THREADS"])
    return build_recognizer(load_config({"MODEL_PATH": str(tiny_model), "TORCH_THREADS": threads}, environ={}))


@pytest.fixture
def service_app_factory(service_recognizer, tiny_model, redis_server, redis_db):
    """Build Flask apps on the test Redis with the shared model; the worker side of each test
    uses the same recognizer (installed as the process's worker model)."""
    from service import jobs
    from service.app import create_app

    jobs.set_recognizer(service_recognizer)

    def make(url: str | None = None, **overrides):
        config = {"REDIS_URL": url or redis_server.url, "MODEL_PATH": str(tiny_model),
                  "RECOGNIZER": service_recognizer, "TESTING": True,
                  # off unless a test asks: a quiet machine sends hundreds of test requests a second
                  "RATE_LIMIT": "off", **overrides}
        return create_app(config)

    yield make
    jobs.set_recognizer(None)


@pytest.fixture
def shipped_client(shipped, redis_server, redis_db):
    """A test client of the service serving the shipped model on the test Redis."""
    from recognizer.artifact import SHIPPED_MODEL
    from service.app import create_app

    app = create_app({"REDIS_URL": redis_server.url, "MODEL_PATH": str(SHIPPED_MODEL), "RECOGNIZER": shipped,
                      "TESTING": True, "RATE_LIMIT": "off"})
    return app.test_client()
