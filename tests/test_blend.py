"""Teacher blends (trainer/blend.py): the student and dlib must see the same blend, mirrored alike,
and a run with them must add their term."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_face

from recognizer.preprocess import AlignmentRecipe, to_tensor
from trainer.configs import get_config
from trainer.data import discover
from trainer.fit import Trainer

pytest.importorskip("dlib", reason="dlib is a training-time extra: pip install --no-deps -r bench/requirements.txt")


@pytest.fixture(scope="module")
def net():
    from trainer import dlib_net

    return dlib_net.load()


def _rows(n: int = 4):
    recipe = AlignmentRecipe()
    h, w = recipe.input_size
    crops = np.stack([np.asarray(synthetic_face(i, 0).convert("RGB").resize((w, h))) for i in range(1, n + 1)])
    chips = np.stack([np.asarray(synthetic_face(i, 0).convert("RGB").resize((150, 150))) for i in range(1, n + 1)])
    return crops, chips, recipe


def test_a_face_blended_with_itself_is_taught_its_own_teacher_vector_mirrored_alike(net):
    from trainer.blend import TeacherBlends

    crops, chips, recipe = _rows()
    centre = np.full(128, 0.01, np.float32)
    blends = TeacherBlends(crops, chips, centre, recipe, net)
    rows = np.arange(len(crops))
    student, targets = blends.make(rows, rows, torch.Generator().manual_seed(3), torch.device("cpu"))
    plain = to_tensor(crops, recipe)
    as_chips = torch.from_numpy(chips).permute(0, 3, 1, 2).float()
    for i in rows:
        flipped = bool(torch.allclose(student[i], plain[i].flip(2), atol=1e-5))
        assert flipped or torch.allclose(student[i], plain[i], atol=1e-5)
        chip = as_chips[i:i + 1].flip(3) if flipped else as_chips[i:i + 1]
        with torch.no_grad():
            expected = F.normalize(F.normalize(net(chip), dim=1) - torch.from_numpy(centre), dim=1)
        assert torch.allclose(targets[i:i + 1], expected, atol=1e-4)
    assert torch.allclose(targets.norm(dim=1), torch.ones(len(rows)), atol=1e-5)


def test_a_blend_lies_between_its_two_faces(net):
    from trainer.blend import TeacherBlends

    crops, chips, recipe = _rows()
    blends = TeacherBlends(crops, chips, np.zeros(128, np.float32), recipe, net)
    student, _ = blends.make(np.array([0]), np.array([1]), torch.Generator().manual_seed(0), torch.device("cpu"))
    a, b = to_tensor(crops[[0]], recipe), to_tensor(crops[[1]], recipe)
    blend = student
    # the blend is lam * a + (1 - lam) * b (or its mirror) for one lam in 0..1
    for candidate in (blend, blend.flip(3)):
        lam = float(((candidate - b) * (a - b)).sum() / ((a - b) ** 2).sum())
        if torch.allclose(candidate, lam * a + (1 - lam) * b, atol=1e-4):
            assert 0.0 <= lam <= 1.0
            return
    pytest.fail("the student's blend is not a mix of its two faces")


def test_fit_with_teacher_blends_adds_their_term(synthetic_celeba, tmp_path):
    from trainer import teacher as teacher_mod

    dataset = discover(synthetic_celeba)
    key = teacher_mod.cache_key(dataset, AlignmentRecipe().crop_box)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(dataset.paths), 128)).astype(np.float32)
    teacher_mod._save(tmp_path / "teacher" / f"{key}-0of1.npz", vectors, np.ones(len(vectors), bool))
    config = get_config("tiny", epochs=1, distill="projection", distill_weight=1.0, mix_teacher=4, mix_share=0.5)
    trainer = Trainer(synthetic_celeba, config, tmp_path / "run", cache_dir=None, teacher_cache=tmp_path)
    assert len(trainer.blends.chips) == len(trainer.splits.train)
    assert list((tmp_path / "chips").glob("*.npy"))  # cut once, kept for the next run
    trainer.fit()
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epoch = history[0]
    assert 0.0 < epoch["blend_distill_loss"] <= 2.0
    # The blends' term enters at distill_weight x mix_share, not at the real faces' full weight.
    weight = config.distill_weight
    assert epoch["loss"] == pytest.approx(epoch["margin_loss"] + weight * epoch["distill_loss"]
                                          + weight * config.mix_share * epoch["blend_distill_loss"], rel=1e-4)


def test_teacher_blends_need_the_projected_term(synthetic_celeba, tmp_path):
    config = get_config("tiny", epochs=1, mix_teacher=4)
    with pytest.raises(ValueError, match="projected teacher term"):
        Trainer(synthetic_celeba, config, tmp_path / "run", cache_dir=None, teacher_cache=tmp_path)
