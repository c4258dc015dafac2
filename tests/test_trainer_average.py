"""``trainer average``: a model made from other models' weights (a soup or an extrapolation),
calibrated on the held-out people like a trained one."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recognizer import Recognizer
from recognizer.artifact import ModelArtifact
from trainer.__main__ import main
from trainer.average import VAR_FLOOR, combine_state


def _state(scale: float) -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.full((2, 3), scale), "bn.running_var": torch.tensor([1.0, scale]),
            "bn.num_batches_tracked": torch.tensor(7 if scale > 1 else 3)}


def test_weights_combine_every_float_tensor_and_keep_the_counter_of_the_first():
    mid, floored = combine_state([_state(1.0), _state(3.0)], [0.5, 0.5])
    assert torch.equal(mid["conv.weight"], torch.full((2, 3), 2.0)) and floored == 0
    assert torch.equal(mid["bn.running_var"], torch.tensor([1.0, 2.0]))
    assert int(mid["bn.num_batches_tracked"]) == 3
    past, floored = combine_state([_state(1.0), _state(3.0)], [2.0, -1.0])  # 2*1 - 3 = -1 for the weight
    assert torch.equal(past["conv.weight"], torch.full((2, 3), -1.0))
    assert floored == 1 and float(past["bn.running_var"][1]) == pytest.approx(VAR_FLOOR)


@pytest.mark.parametrize("states, weights, message", [
    ([_state(1.0), _state(2.0)], [0.7, 0.7], "sum to 1"),
    ([_state(1.0)], [0.5, 0.5], "one weight per model"),
    ([_state(1.0), {"conv.weight": torch.zeros(2, 3)}], [0.5, 0.5], "other layers"),
    ([_state(1.0), {**_state(2.0), "conv.weight": torch.zeros(3, 2)}], [0.5, 0.5], "shape"),
])
def test_combinations_that_are_not_a_model_are_refused(states, weights, message):
    with pytest.raises(ValueError, match=message):
        combine_state(states, weights)


def _nudged(tiny_model: Path, out: Path) -> Path:
    source = ModelArtifact.load(tiny_model)
    gen = torch.Generator().manual_seed(0)
    state = {k: (v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point()
                 and not k.endswith("running_var") else v) for k, v in source.state_dict.items()}
    ModelArtifact(state_dict=state, recipe=source.recipe, threshold=source.threshold,
                  flip_average=source.flip_average, training=source.training).save(out)
    return out


def test_the_cli_writes_a_calibrated_model_that_records_its_sources(tiny_model, synthetic_celeba, tmp_path, capsys):
    other = _nudged(tiny_model, tmp_path / "other.pt")
    out = tmp_path / "avg" / "model.pt"
    assert main(["average", "--model", str(tiny_model), "--model", str(other), "--weights", "1.5,-0.5",
                 "--celeba1k", str(synthetic_celeba), "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    made = ModelArtifact.load(out)
    a, b = ModelArtifact.load(tiny_model).state_dict, ModelArtifact.load(other).state_dict
    name = next(k for k in a if k.endswith("conv.weight"))
    assert torch.allclose(made.state_dict[name], 1.5 * a[name].float() - 0.5 * b[name].float(), atol=1e-6)
    sources = made.training["averaged_from"]
    assert [s["weight"] for s in sources] == [1.5, -0.5]
    assert sources[1]["version"] == ModelArtifact.load(other).version
    assert "trainer average" in made.training["threshold_source"]
    assert "batchnorm" not in made.training and "released_from" not in made.training
    printed = capsys.readouterr().out
    assert f'"version": "{made.version}"' in printed and '"closed_set"' in printed
    # the threshold is where FAR 1e-3 falls for this model, not a copy of the first model's
    assert made.threshold == pytest.approx(float(printed.split('"threshold": ')[1].split(",")[0]))


def test_a_model_combined_with_weight_one_is_that_model(tiny_model, synthetic_celeba, tmp_path):
    other = _nudged(tiny_model, tmp_path / "other.pt")
    out = tmp_path / "same.pt"
    assert main(["average", "--model", str(tiny_model), "--model", str(other), "--weights", "1,0",
                 "--celeba1k", str(synthetic_celeba), "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    crops = np.random.default_rng(0).integers(0, 255, (4, *ModelArtifact.load(out).recipe.input_size, 3), np.uint8)
    np.testing.assert_allclose(Recognizer(out).embed(crops), Recognizer(tiny_model).embed(crops), atol=1e-5)


def test_bad_weights_are_a_clear_usage_error(tiny_model, synthetic_celeba, tmp_path, capsys):
    out = tmp_path / "never.pt"
    assert main(["average", "--model", str(tiny_model), "--model", str(tiny_model), "--weights", "1,1",
                 "--celeba1k", str(synthetic_celeba), "--out", str(out)]) == 2
    assert "sum to 1" in capsys.readouterr().err and not out.exists()
    assert main(["average", "--model", str(tiny_model), "--weights", "1",
                 "--celeba1k", str(synthetic_celeba), "--out", str(out)]) == 2
    assert "--bn-images" in capsys.readouterr().err and not out.exists()
    assert main(["average", "--model", str(tiny_model), "--weights", "abc",
                 "--celeba1k", str(synthetic_celeba), "--out", str(out)]) == 2
    assert not out.exists()


def test_batchnorm_statistics_are_those_of_the_training_images_and_their_mirrors(tiny_model, synthetic_celeba,
                                                                                  tmp_path):
    from recognizer.embedder import build_backbone
    from recognizer.preprocess import to_tensor
    from trainer.average import reestimate_batchnorm, training_crops

    good = ModelArtifact.load(tiny_model)
    crops = training_crops(good, synthetic_celeba, str(tmp_path / "cache"), 48)
    broken = ModelArtifact(state_dict={k: (torch.zeros_like(v) if k.endswith("running_mean") else
                                           torch.full_like(v, 25.0) if k.endswith("running_var") else v.clone())
                                       for k, v in good.state_dict.items()},
                           recipe=good.recipe, threshold=good.threshold, training=dict(good.training))
    reestimate_batchnorm(broken, crops, batch_size=64)  # one batch: the statistics are that batch's
    # the first layer's input, computed here by hand from the crops and their mirrors
    net = build_backbone()
    net.load_state_dict(good.state_dict)
    batch = to_tensor(crops, good.recipe)
    with torch.no_grad():
        first = net.conv2d_1a.conv(torch.cat([batch, torch.flip(batch, dims=[3])]))
    torch.testing.assert_close(broken.state_dict["conv2d_1a.bn.running_mean"], first.mean(dim=(0, 2, 3)),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(broken.state_dict["conv2d_1a.bn.running_var"],
                               first.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
    assert "48 training images" in broken.training["batchnorm"]
    assert all(torch.equal(broken.state_dict[k], good.state_dict[k]) for k in good.state_dict
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    # in several equal batches, the first layer's mean is still the whole set's (an average, not a decay)
    again = ModelArtifact(state_dict=dict(broken.state_dict), recipe=good.recipe, threshold=good.threshold)
    reestimate_batchnorm(again, crops, batch_size=16)
    torch.testing.assert_close(again.state_dict["conv2d_1a.bn.running_mean"], first.mean(dim=(0, 2, 3)),
                               rtol=1e-4, atol=1e-5)


def test_batchnorm_images_come_from_the_training_split_only(tiny_model, synthetic_celeba, tmp_path):
    from trainer.average import training_crops
    from trainer.data import discover, load_crops, make_splits

    artifact = ModelArtifact.load(tiny_model)
    config = artifact.training["config"]
    dataset = discover(synthetic_celeba)
    crops, _ = load_crops(dataset, artifact.recipe, tmp_path / "cache")
    sp = make_splits(dataset.labels, config["open_identities"], config["val_per_identity"], config["seed"])
    drawn = training_crops(artifact, synthetic_celeba, str(tmp_path / "cache"), 10_000)
    assert len(drawn) == len(sp.train)
    held_out = {crops[i].tobytes() for i in np.concatenate([sp.closed_val, sp.open_set])}
    assert not held_out & {c.tobytes() for c in drawn}


def test_the_card_says_a_model_was_combined_and_from_what():
    from trainer.release import averaged_note

    training = {"averaged_from": [{"version": "aaa", "weight": 1.5}, {"version": "bbb", "weight": -0.5}],
                "batchnorm": "re-estimated on 4096 training images and their mirrors"}
    note = averaged_note(training)
    assert "--weights 1.5,-0.5 --bn-images 4096" in note and "1.5 x `aaa` - 0.5 x `bbb`" in note
    assert "combined like the weights" in averaged_note({**training, "batchnorm": None})
    assert averaged_note({"config": {}}) == ""  # a trained model's card is unchanged
    assert averaged_note({"batchnorm": "re-estimated on 4096 training images and their mirrors"}) == (
        "; BatchNorm statistics re-estimated on 4096 training images and their mirrors")


def test_one_model_alone_gets_its_batchnorm_statistics_measured_again(tiny_model, synthetic_celeba, tmp_path):
    out = tmp_path / "precise.pt"
    assert main(["average", "--model", str(tiny_model), "--weights", "1", "--bn-images", "32",
                 "--celeba1k", str(synthetic_celeba), "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    before, after = ModelArtifact.load(tiny_model).state_dict, ModelArtifact.load(out)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert all(torch.equal(after.state_dict[k], before[k].float()) for k in before if not k.endswith(stats))
    assert not torch.equal(after.state_dict["conv2d_1a.bn.running_mean"], before["conv2d_1a.bn.running_mean"])
    assert "32 training images" in after.training["batchnorm"]


def test_a_fit_ends_with_batchnorm_statistics_of_clean_training_images(synthetic_celeba, tmp_path):
    from trainer.configs import get_config
    from trainer.fit import Trainer

    config = replace(get_config("tiny"), bn_images=32)
    artifact = Trainer(synthetic_celeba, config, tmp_path / "run", cache_dir=None).fit()
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["backbone"]
    stats = ("running_mean", "running_var", "num_batches_tracked")
    # the weights are the trained ones; only the statistics were measured again, and the training
    # state (what --resume continues from) still has the running averages
    assert all(torch.equal(artifact.state_dict[k], checkpoint[k]) for k in checkpoint if not k.endswith(stats))
    assert not torch.equal(artifact.state_dict["last_bn.running_var"], checkpoint["last_bn.running_var"])
    assert "32 training images" in ModelArtifact.load(tmp_path / "run" / "model.pt").training["batchnorm"]


def test_with_bn_images_0_a_fit_keeps_the_running_averages(tiny_model):
    artifact = ModelArtifact.load(tiny_model)
    checkpoint = torch.load(tiny_model.parent / "checkpoint.pt", weights_only=True)["backbone"]
    assert artifact.training["config"]["bn_images"] == 0 and "batchnorm" not in artifact.training
    assert torch.equal(artifact.state_dict["last_bn.running_var"], checkpoint["last_bn.running_var"])
