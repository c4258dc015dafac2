"""Training on a lent machine: caches carried in parts and rebuilt, the model carried back, and
a time budget that shortens the schedule instead of cutting it off."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recognizer.artifact import ModelArtifact
from recognizer.preprocess import AlignmentRecipe
from trainer import bundle
from trainer import teacher as teacher_mod
from trainer.configs import get_config
from trainer.data import crops_cache_path, discover, load_crops
from trainer.fit import Trainer


def test_a_packed_cache_rebuilds_where_no_image_exists_and_trains(synthetic_celeba, tmp_path):
    source = tmp_path / "celeba"
    shutil.copytree(synthetic_celeba, source)
    recipe = AlignmentRecipe(input_size=get_config("tiny").input_size)
    dataset = discover(source)
    crops, ok = load_crops(dataset, recipe, tmp_path / "here")
    key = teacher_mod.cache_key(dataset, recipe.crop_box)
    vectors = np.random.default_rng(0).normal(size=(len(dataset.paths), 128)).astype(np.float32)
    done = np.arange(len(vectors)) % 3 != 0
    teacher_mod._save(tmp_path / "here" / "teacher" / f"{key}-0of1.npz", vectors, done)
    mirror_key = teacher_mod.cache_key(dataset, recipe.crop_box, "mirror")  # a mirror run's targets travel too
    mirrored = np.random.default_rng(1).normal(size=vectors.shape).astype(np.float32)
    teacher_mod._save(tmp_path / "here" / "teacher" / f"{mirror_key}-0of1.npz", mirrored, ~done)

    summary = bundle.pack([source], recipe.input_size, tmp_path / "bundle", tmp_path / "here", tmp_path / "here",
                          part_mib=0.05)
    assert len(summary["parts"]) >= 2 and summary["crops"] == int(ok.sum())
    assert summary["taught_sources"] == 1 and summary["teacher_caches"] == 2
    shutil.rmtree(source)  # the other machine: none of the images, only the parts
    parts = [tmp_path / "bundle" / p for p in summary["parts"]]
    with pytest.raises(bundle.BundleError, match="missing"):
        bundle.unpack(parts[:-1], tmp_path / "there", tmp_path / "there")
    assert bundle.unpack(parts, tmp_path / "there", tmp_path / "there")["kept_existing"] == []
    again = bundle.unpack(parts, tmp_path / "there", tmp_path / "there")  # a retry keeps what is there
    assert again["kept_existing"] == [crops_cache_path(discover(source), recipe, tmp_path / "there").name]

    rebuilt = discover(source)
    assert [p.stat().st_size for p in rebuilt.paths] == [0] * len(dataset.paths)  # placeholders only
    assert rebuilt.identities == dataset.identities
    with np.load(crops_cache_path(rebuilt, recipe, tmp_path / "there")) as data:
        assert np.array_equal(data["ok"], ok)
        assert np.abs(data["crops"].astype(int) - crops).mean() < 4.0  # lossy, as documented
    got, have = teacher_mod.load(rebuilt, tmp_path / "there", recipe)
    assert np.array_equal(have, done) and np.allclose(got[done], vectors[done], atol=1e-2)
    got, have = teacher_mod.load(rebuilt, tmp_path / "there", recipe, "mirror")
    assert np.array_equal(have, ~done) and np.allclose(got[~done], mirrored[~done], atol=1e-2)

    config = get_config("tiny", epochs=1, distill="projection", distill_weight=1.0)
    trainer = Trainer(source, config, tmp_path / "run", cache_dir=tmp_path / "there", teacher_cache=tmp_path / "there")
    assert trainer.teacher_have[trainer.splits.train].any()
    assert trainer.fit() is not None


def test_a_model_goes_back_in_pieces_and_joins_verified(tiny_model, tmp_path):
    result = bundle.shrink(tiny_model, tmp_path / "out", piece_mib=0.2)
    assert len(result["pieces"]) > 1
    assert all((tmp_path / "out" / p).stat().st_size <= 0.2 * 2**20 for p in result["pieces"])
    version = bundle.join(tmp_path / "out", tmp_path / "model.pt")
    joined, original = ModelArtifact.load(tmp_path / "model.pt"), ModelArtifact.load(tiny_model)
    assert joined.version == version and joined.training["released_from"] == original.version
    for name, tensor in original.state_dict.items():
        assert torch.allclose(joined.state_dict[name].float(), tensor.float(), atol=1e-2, rtol=1e-2), name
    (tmp_path / "out" / result["pieces"][-1]).unlink()
    with pytest.raises(Exception):
        bundle.join(tmp_path / "out", tmp_path / "broken.pt")


def test_a_time_budget_shortens_the_schedule_and_still_calibrates(synthetic_celeba, tmp_path):
    config = get_config("tiny", epochs=3)
    trainer = Trainer(synthetic_celeba, config, tmp_path / "short", cache_dir=None)
    artifact = trainer.fit(budget_seconds=1e-3)  # only the first epoch fits
    history = [json.loads(line) for line in (tmp_path / "short" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1] and artifact is not None
    assert "FAR" in artifact.training["threshold_source"]  # the last epoch's calibration ran
    assert artifact.training["config"]["epochs"] == 1 and artifact.training["budget"]["epochs_asked"] == 3
    checkpoint = torch.load(tmp_path / "short" / "checkpoint.pt", weights_only=True)
    assert checkpoint["config"]["epochs"] == 1

    roomy = Trainer(synthetic_celeba, get_config("tiny", epochs=2), tmp_path / "roomy", cache_dir=None)
    assert roomy.fit(budget_seconds=3600) is not None
    assert len((tmp_path / "roomy" / "metrics.jsonl").read_text().splitlines()) == 2


def test_the_second_epoch_gives_back_the_epochs_a_slow_start_cost(synthetic_celeba, tmp_path):
    # the lent H200's first run: epoch 1 took 45 s (17 s of it the first step), the rest 25 s
    trainer = Trainer(synthetic_celeba, get_config("tiny", epochs=40), tmp_path / "run", cache_dir=None)
    trainer.fit_budget(1, elapsed=45.0, budget_seconds=390.0)
    assert trainer.config.epochs == 8 and trainer.budget["epochs_asked"] == 40
    trainer.fit_budget(2, elapsed=70.0, budget_seconds=390.0, per_epoch=25.0)
    assert trainer.config.epochs == 2 + 320 // 25
    trainer.fit_budget(2, elapsed=70.0, budget_seconds=3600.0, per_epoch=25.0)
    assert trainer.config.epochs == 40  # never more than were asked


def test_the_model_card_names_the_gpu_a_run_trained_on():
    from trainer.release import machine_note

    gpu = machine_note({"cpu": "Intel Xeon", "gpu": "NVIDIA H200", "threads": 16}, "unused")
    assert gpu == "one NVIDIA H200 GPU (host CPU: Intel Xeon)"
    assert machine_note({"cpu": "AMD EPYC", "threads": 2}, "unused") == "2 cores of: AMD EPYC"
    assert machine_note({}, "given with --cpu") == "2 cores of: given with --cpu"
