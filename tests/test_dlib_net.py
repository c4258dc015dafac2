"""dlib's ResNet read into PyTorch (trainer/dlib_net.py) must give dlib's own descriptor: the
teacher cache and any teacher run during training rely on it being the same network."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import synthetic_face

dlib = pytest.importorskip("dlib", reason="dlib is a training-time extra: pip install --no-deps -r bench/requirements.txt")


@pytest.fixture(scope="module")
def nets():
    from trainer import dlib_net
    from trainer.teacher import import_dlib

    (models,) = import_dlib("face_recognition_models")
    path = models.face_recognition_model_location()
    return dlib_net.load(path), dlib.face_recognition_model_v1(path)


def _chips() -> np.ndarray:
    """Faces of different people, a flat grey chip and noise: the residual additions whose shapes
    differ and the zero padding are exercised by any input, the values by varied ones."""
    rng = np.random.default_rng(0)
    faces = [np.asarray(synthetic_face(ident, 0).convert("RGB").resize((150, 150))) for ident in (1, 2, 3)]
    grey = np.full((150, 150, 3), 128, np.uint8)
    noise = rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)
    return np.stack(faces + [grey, noise])


def test_the_pytorch_network_gives_dlibs_descriptor(nets):
    ours, theirs = nets
    chips = _chips()
    expected = np.stack([np.asarray(theirs.compute_face_descriptor(chip)) for chip in chips])
    with torch.inference_mode():
        got = ours(torch.from_numpy(chips).permute(0, 3, 1, 2).float()).numpy()
    assert got.shape == (len(chips), 128)
    assert np.abs(got - expected).max() < 1e-4, np.abs(got - expected).max()
    # and they are not all the same vector, so the comparison means something
    assert np.linalg.norm(expected[0] - expected[1]) > 0.05


def test_a_file_that_is_not_dlibs_network_is_refused(tmp_path):
    from trainer import dlib_net

    bad = tmp_path / "net.dat"
    bad.write_bytes(b"\x01\x01\x01\x0dloss_metric_2" + bytes(64))
    with pytest.raises(dlib_net.DlibFormatError):
        dlib_net.load(bad)
