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


def test_the_mirror_view_is_dlibs_mirror_average_and_the_same_for_a_face_and_its_mirror(nets):
    from trainer.teacher import describe_tensor

    ours, _ = nets
    chips = torch.from_numpy(_chips()[:3]).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        mirror = describe_tensor(ours, chips, "mirror")
        plain = describe_tensor(ours, chips, "plain")
        flipped = describe_tensor(ours, chips.flip(3), "plain")
        assert torch.allclose(mirror, torch.nn.functional.normalize(plain + flipped, dim=1), atol=1e-6)
        assert torch.allclose(describe_tensor(ours, chips.flip(3), "mirror"), mirror, atol=1e-5)
    assert float((mirror * plain).sum(1).min()) < 0.99999  # the mirror changes the vector: not a no-op
    with pytest.raises(ValueError, match="one of plain, mirror"):
        describe_tensor(ours, chips, "jitter")


def test_mirror_vectors_are_cached_apart_from_plain_ones(tmp_path):
    from conftest import make_synthetic_celeba

    from trainer import teacher as teacher_mod
    from trainer.data import discover

    root = make_synthetic_celeba(tmp_path / "src", identities=3, per_identity=2)
    dataset = discover(root)
    teacher_mod.fill(root, tmp_path, views="mirror")
    mirror, have = teacher_mod.load(dataset, tmp_path, views="mirror")
    assert have.all() and np.allclose(np.linalg.norm(mirror, axis=1), 1.0, atol=1e-5)
    assert not teacher_mod.load(dataset, tmp_path)[1].any()  # no plain vectors were made
    assert teacher_mod.targets_for(dataset.paths, [root], tmp_path, views="mirror")[1].all()
    with pytest.raises(ValueError, match=r"no teacher vectors \(plain\)"):
        teacher_mod.targets_for(dataset.paths, [root], tmp_path)
    other = make_synthetic_celeba(tmp_path / "other", identities=2, per_identity=2)
    with pytest.raises(ValueError, match="--views mirror"):
        teacher_mod.targets_for(discover(other).paths, [other], tmp_path, views="mirror")
