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


def face_data() -> Path | None:
    value = os.environ.get("FACE_DATA")
    return Path(value) if value and Path(value).is_dir() else None


requires_face_data = pytest.mark.skipif(
    face_data() is None, reason="real face images not available: set FACE_DATA=../shared/data to run"
)


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
def astronaut() -> np.ndarray:
    """A real photograph with one face that ships with scikit-image."""
    from skimage import data

    return data.astronaut()
