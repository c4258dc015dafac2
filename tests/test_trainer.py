"""Trainer: the CosFace head, metrics on hand-made inputs, data discovery, fit and resume, evaluate."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_face
from PIL import Image

from recognizer import Recognizer
from recognizer.artifact import ModelArtifact
from trainer import metrics
from trainer.configs import get_config, parse_overrides
from trainer.cosface import CosFaceHead
from trainer.data import discover, make_splits
from trainer.evaluate import evaluate_identification, evaluate_lfw, parse_lfw_pairs
from trainer.fit import Trainer, random_erase
from trainer.precision import resolve_precision

# ---- CosFace -------------------------------------------------------------------------------------

def test_cosface_margin_only_on_target_and_scaled():
    torch.manual_seed(0)
    head = CosFaceHead(8, 5, scale=30.0, margin=0.25)
    emb = torch.randn(4, 8, requires_grad=True)
    labels = torch.tensor([0, 3, 3, 1])
    cos = head.cosines(emb)
    expected_cos = torch.nn.functional.normalize(emb, dim=1) @ torch.nn.functional.normalize(head.weight, dim=1).T
    torch.testing.assert_close(cos, expected_cos)
    logits = head.logits(cos, labels)
    diff = cos * 30.0 - logits
    for row, label in enumerate(labels.tolist()):
        for col in range(5):
            assert diff[row, col].item() == pytest.approx(30.0 * 0.25 if col == label else 0.0, abs=1e-5)
    loss, _ = head(emb, labels)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()
    assert emb.grad.abs().sum() > 0


# ---- metrics on inputs with known answers --------------------------------------------------------

def test_random_erase_erases_one_rectangle_in_the_asked_share_of_samples():
    batch = torch.zeros(2000, 3, 24, 20)
    out = random_erase(batch, torch.Generator().manual_seed(0), p=0.3, area=(0.05, 0.25))
    erased = (out != 0).any(1)  # N x H x W
    share = erased.float().mean((1, 2))
    hit = share > 0
    assert 0.26 < hit.float().mean().item() < 0.34
    assert share[hit].min() >= 0.02 and share[hit].max() <= 0.30  # pixel rounding around 0.05 .. 0.25
    for mask in erased[hit][:50]:  # one solid rectangle: rows and columns touched form a full block
        rows, cols = mask.any(1), mask.any(0)
        assert mask.sum() == rows.sum() * cols.sum()
    assert torch.equal(random_erase(batch, torch.Generator().manual_seed(0), p=0.0), batch)


def test_an_explicit_none_override_reaches_the_config():
    from trainer.configs import config_from_cli

    config = config_from_cli("tiny", None, ["limit_identities=none", "distill=projection"])
    assert config.limit_identities is None and config.distill == "projection" and config.epochs == 2
    assert config_from_cli("tiny", 5, []).epochs == 5


def test_config_overrides_are_typed_and_checked():
    got = parse_overrides(["random_erase=0.5", "epochs=8", "input_size=112,96", "augment=false", "precision=fp32"])
    assert got == {"random_erase": 0.5, "epochs": 8, "input_size": (112, 96), "augment": False, "precision": "fp32"}
    assert get_config("cpu", **got).input_size == (112, 96)
    for bad, says in (("nope=1", "FIELD one of"), ("epochs=x", "not a valid int"), ("random_erase", "FIELD=VALUE"),
                      ("augment=maybe", "not a valid bool")):
        with pytest.raises(ValueError, match=says):
            parse_overrides([bad])


def test_tpr_at_fpr_and_auc_known_answers():
    neg = np.arange(1000) / 1000.0  # 0.000 .. 0.999
    pos = np.array([0.9995, 0.995, 0.95, 0.5])
    tpr, thr = metrics.tpr_at_fpr(pos, neg, 0.01)  # 10 negatives may pass: threshold = 0.989
    assert thr == pytest.approx(0.989) and tpr == 0.5
    tpr, _ = metrics.tpr_at_fpr(pos, neg, 0.001)  # threshold 0.998
    assert tpr == 0.25
    assert metrics.roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert metrics.roc_auc(np.array([1.0]), np.array([1.0])) == 0.5
    assert metrics.roc_auc(np.array([0.0, 2.0]), np.array([1.0])) == 0.5
    fpr, tpr_curve = metrics.roc_curve(np.array([0.9, 0.8]), np.array([0.1, 0.85]))
    assert fpr[-1] == 1.0 and tpr_curve[-1] == 1.0


def test_kfold_accuracy_and_identification():
    scores = np.array([0.9, 0.8, 0.1, 0.2] * 5)
    same = np.array([True, True, False, False] * 5)
    folds = np.repeat(np.arange(5), 4)
    report = metrics.kfold_accuracy(scores, same, folds)
    assert report["accuracy_mean"] == 1.0 and report["accuracy_std"] == 0.0
    gallery = np.eye(3, dtype=np.float32)
    labels = np.array([10, 20, 30])
    queries = np.array([[0.9, 0.1, 0], [0, 0.2, 0.8], [0.6, 0.7, 0]], dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    acc = metrics.closed_set_accuracy(gallery, labels, queries, np.array([10, 30, 10]), ks=(1, 2))
    assert acc == {"top1": pytest.approx(2 / 3), "top2": 1.0}


def test_parse_lfw_pairs(tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t2\nAnn\t1\t2\nBob\t1\t3\nAnn\t1\tBob\t2\nCid\t4\tAnn\t2\n"
                     "Cid\t1\t2\nDee\t2\t3\nDee\t1\tBob\t1\nAnn\t3\tCid\t1\n")
    parsed, same, folds = parse_lfw_pairs(pairs)
    assert parsed[0] == ("Ann", 1, "Ann", 2) and parsed[2] == ("Ann", 1, "Bob", 2)
    assert same.tolist() == [True, True, False, False] * 2
    assert folds.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    pairs.write_text("2\t2\nAnn\t1\t2\n")
    with pytest.raises(ValueError, match="promises"):
        parse_lfw_pairs(pairs)


# ---- data ----------------------------------------------------------------------------------------

def test_discover_both_layouts(synthetic_celeba, tmp_path):
    ds = discover(synthetic_celeba)
    assert ds.layout == "celeba" and len(ds.paths) == 80 and len(set(ds.identities)) == 8
    with_header = tmp_path / "celeba"
    (with_header / "img_align_celeba").mkdir(parents=True)
    for p in sorted((synthetic_celeba / "img_align_celeba").iterdir())[:3]:
        (with_header / "img_align_celeba" / p.name).write_bytes(p.read_bytes())
    lines = (synthetic_celeba / "identity_CelebA.txt").read_text().splitlines()[:3]
    (with_header / "identity_CelebA.txt").write_text("3\nimage_id identity\n" + "\n".join(lines))
    assert len(discover(with_header).paths) == 3
    folders = tmp_path / "folders"
    for person in ("ann", "bob"):
        (folders / person).mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(folders / person / "1.jpg")
    ds = discover(folders)
    assert ds.layout == "folders" and ds.identities == ["ann", "bob"]


def test_splits_are_seeded_and_disjoint():
    labels = np.repeat(np.arange(10), 6)
    a = make_splits(labels, open_identities=2, val_per_identity=1, seed=3)
    b = make_splits(labels, open_identities=2, val_per_identity=1, seed=3)
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("train", "closed_val", "open_set"))
    assert len(set(labels[a.open_set])) == 2
    assert not set(labels[a.open_set]) & set(labels[a.train])
    assert set(labels[a.closed_val]) <= set(labels[a.train])
    assert len(a.train) + len(a.closed_val) + len(a.open_set) == 60


# ---- fit, resume, evaluate -----------------------------------------------------------------------

def test_tiny_fit_learns_and_writes_everything(tiny_model):
    run = tiny_model.parent
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["loss"] < history[0]["loss"]
    for key in ("train_accuracy", "closed_top1", "open_roc_auc", "open_tar@far=0.001", "images_per_second"):
        assert key in history[-1]
    assert (run / "curves.png").stat().st_size > 1000 and (run / "checkpoint.pt").is_file()
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert {"epoch", "backbone", "head", "optimizer", "scheduler", "config", "splits"} <= set(checkpoint)
    artifact = ModelArtifact.load(tiny_model)
    assert "FAR" in artifact.training["threshold_source"]


def test_resume_is_exact(synthetic_celeba, tmp_path):
    """Stopped after epoch 1 and resumed == never stopped: same weights, same metrics. Training
    that spans sessions depends on it (dropout draws from torch's global RNG)."""
    config = get_config("tiny", epochs=2, dropout=0.5)
    Trainer(synthetic_celeba, config, tmp_path / "whole", cache_dir=None).fit()
    assert Trainer(synthetic_celeba, config, tmp_path / "split", cache_dir=None).fit(until=1) is None
    torch.manual_seed(12345)  # whatever ran in between must not matter
    trainer = Trainer(synthetic_celeba, config, tmp_path / "split", resume=True, cache_dir=None)
    assert trainer.start_epoch == 2
    trainer.fit()
    whole = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    split = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in split] == [1, 2]
    for a, b in zip(whole, split):
        for key in ("loss", "train_accuracy", "closed_top1", "open_roc_auc"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    wa = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["backbone"]
    wb = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["backbone"]
    for name in wa:
        assert torch.allclose(wa[name].float(), wb[name].float(), atol=1e-6), name


def test_order_seed_redraws_the_training_but_not_the_split(synthetic_celeba, tmp_path):
    """A second run of a recipe must be judged on the very same held-out people and images, so
    ``order_seed`` changes what training draws and nothing the evaluation stands on."""
    runs = {}
    for name, order_seed in (("default", None), ("same", 0), ("other", 1)):
        config = get_config("tiny", epochs=1, order_seed=order_seed)
        Trainer(synthetic_celeba, config, tmp_path / name, cache_dir=None).fit()
        runs[name] = (json.loads((tmp_path / name / "splits.json").read_text()),
                      torch.load(tmp_path / name / "checkpoint.pt", weights_only=True))
    split_default, ckpt_default = runs["default"]
    for name in ("same", "other"):
        assert runs[name][1]["splits"] == ckpt_default["splits"], name
    weights = ["last_linear.weight", "block8.conv2d.weight"]
    for key in weights:  # order_seed == seed is the default run
        assert torch.allclose(runs["same"][1]["backbone"][key].float(), ckpt_default["backbone"][key].float(), atol=1e-6)
    assert any(not torch.allclose(runs["other"][1]["backbone"][k].float(), ckpt_default["backbone"][k].float())
               for k in weights)


def _extra_source(tmp_path: Path) -> Path:
    """The CelebA layout `trainer prepare` writes: people 201-203 with 3, 2 and 1 images."""
    extra = tmp_path / "extra"
    (extra / "img_align_celeba").mkdir(parents=True)
    rows = []
    for person, count in ((201, 3), (202, 2), (203, 1)):
        for n in range(count):
            synthetic_face(person, n).save(extra / "img_align_celeba" / f"{person}_{n}.jpg")
            rows.append(f"{person}_{n}.jpg {person}\n")
    (extra / "identity_CelebA.txt").write_text("".join(rows))
    return extra


def test_extra_sources_train_only_with_labels_of_their_own(synthetic_celeba, tmp_path):
    """An extra source adds training identities (never the split's), each under its own label,
    and drops identities with fewer than ``extra_min_images`` images."""
    extra = _extra_source(tmp_path)
    config = get_config("tiny", epochs=1)
    base = Trainer(synthetic_celeba, config, tmp_path / "base", cache_dir=None)
    both = Trainer(synthetic_celeba, config, tmp_path / "both", cache_dir=None, extra_dirs=[extra])
    added = len(both.splits.train) - len(base.splits.train)
    summary = both.extra_summary[0]
    assert added == summary["images"] == 5 and summary["identities"] == 2
    assert summary["dropped_under_2_images"] == 1
    assert np.array_equal(both.splits.closed_val, base.splits.closed_val)
    assert np.array_equal(both.splits.open_set, base.splits.open_set)
    new_labels = set(both.labels[both.splits.train[-added:]].tolist())
    assert new_labels.isdisjoint(both.labels[: len(base.labels)].tolist())
    assert len(both.class_index) == len(base.class_index) + len(new_labels)
    assert both.gallery_idx.max() < len(base.labels)  # closed-set evaluation stays on the main source


def test_auto_precision_is_bf16_only_where_the_cpu_has_it():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, {"avx2", "avx512f", "avx512_bf16"})[0] == "bf16"
    assert resolve_precision("auto", cpu, {"avx2", "amx_bf16"})[0] == "bf16"
    precision, why = resolve_precision("auto", cpu, {"avx2", "fma", "avx512f"})
    assert precision == "fp32" and "emulated" in why
    assert resolve_precision("bf16", cpu, {"avx2"})[0] == "bf16"  # an explicit choice is kept


def test_evaluate_lfw_and_identification_on_synthetic_sets(tiny_model, tmp_path):
    root = tmp_path / "lfw"
    for ident, name in enumerate(["Ann_A", "Bob_B", "Cid_C", "Dee_D"], start=100):
        (root / name).mkdir(parents=True)
        for n in range(1, 4):
            synthetic_face(ident, n).save(root / name / f"{name}_{n:04d}.jpg")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t2\nAnn_A\t1\t2\nBob_B\t1\t3\nAnn_A\t1\tBob_B\t2\nCid_C\t3\tDee_D\t2\n"
                     "Cid_C\t1\t2\nDee_D\t2\t3\nDee_D\t1\tBob_B\t1\nAnn_A\t3\tCid_C\t1\n")
    recognizer = Recognizer(tiny_model)
    report = evaluate_lfw(recognizer, root, pairs, crop_mode="frame")
    assert report["pairs"] == 8 and 0.0 <= report["accuracy_mean"] <= 1.0 and len(report["fold_accuracies"]) == 2
    ident = evaluate_identification(recognizer, root, crop_mode="frame", enrolled_share=0.75)
    assert ident["enrolled_people"] == 3 and ident["stranger_people"] == 1
    assert 0.0 <= ident["top1"] <= ident["top5"] <= 1.0 and "fnir" in ident["open_set"]


def test_release_writes_a_half_size_model_its_card_and_refuses_nothing_it_should_not(
        tiny_model, synthetic_celeba, tmp_path):
    """`trainer release` end to end on the tiny model and a synthetic celeba_ir layout."""
    from trainer.release import MIN_AGREEMENT, half_precision, release

    ir = tmp_path / "celeba_ir"
    (ir / "celebA_query").mkdir(parents=True)
    (ir / "celebA_distractors").mkdir()
    rows = ["img,id"]
    for ident in (301, 302, 303):
        for n in range(3):
            synthetic_face(ident, n).crop((45, 77, 128, 177)).save(ir / "celebA_query" / f"{ident}_{n}.jpg")
            rows.append(f"{ident}_{n}.jpg,{ident}")
    for ident in range(400, 410):
        synthetic_face(ident, 0).crop((45, 77, 128, 177)).save(ir / "celebA_distractors" / f"{ident}.jpg")
    (ir / "celebA_anno_query.csv").write_text("\n".join(rows) + "\n")

    report = release(tiny_model, tmp_path / "models", ir, synthetic_celeba, cache_dir=None, cpu="test CPU")
    shipped = ModelArtifact.load(tmp_path / "models" / "facerec.pt")
    source = ModelArtifact.load(tiny_model)
    assert shipped.version == report["version"] != source.version
    assert shipped.training["released_from"] == source.version
    assert all(t.dtype == torch.float16 for n, t in shipped.state_dict.items()
               if t.is_floating_point() and not n.endswith(("running_mean", "running_var")))
    assert (tmp_path / "models" / "facerec.pt").stat().st_size < 0.6 * tiny_model.stat().st_size
    assert report["agreement"]["min_cosine"] >= MIN_AGREEMENT
    assert report["celeba_ir"]["queries"] == 9 and "tpr@fpr=0.01" in report["celeba_ir"]
    assert set(report["conditions"]) and "closed_set" in report["split"]
    for spread in (report["split"]["open_tar_spread"], *report["celeba_ir"]["spread"].values()):
        lo, hi = spread["ci90"]
        assert 0.0 <= lo <= hi <= 1.0 and spread["sd"] >= 0.0  # identity resamplings' 90% interval
    card = (tmp_path / "models" / "README.md").read_text()
    assert re.search(r"\| open-set TAR @ FAR 0.001 .*\| \d\.\d{3} \(\d\.\d{3}-\d\.\d{3}\) \|", card)
    assert report["version"] in card and "{{" not in card and source.training["machine"]["cpu"] in card
    assert json.loads((tmp_path / "models" / "card.json").read_text())["version"] == report["version"]
    assert half_precision(source).threshold == source.threshold
    # the held-out photos through the detector, and AS-norm's calibration (too few people here: skipped, saying why)
    view = report["split"]["service_view"]
    assert view["skipped"].startswith("faces found in 0 of")  # MTCNN finds no face in these drawings
    assert "Photos as the service sees them:" in card and "cohort size" in report["score_norm"]["skipped"]
    assert not (tmp_path / "models" / "facerec.score_norm.json").exists()
    # the stranger curve needs faces of at least 2 held-out people: skipped here, saying why, and not written
    assert "with a face found: too few to pair strangers" in report["strangers"]["skipped"]
    assert "Strangers against a gallery" in card and not (tmp_path / "models" / "facerec.strangers.json").exists()
    # the int8 parameters: written beside the release when int8 meets its bars, else skipped, saying which
    int8, kept = report["int8"], (tmp_path / "models" / "facerec.int8.json").exists()
    assert kept == ("skipped" not in int8) and (kept or "not close enough" in int8["skipped"])
    assert "The embedding network in int8" in card


def test_the_cards_stranger_sentence():
    from trainer.release import STRANGER_GALLERIES, strangers_note

    sizes = [str(n) for n in STRANGER_GALLERIES]
    note = strangers_note({"source": "made up", "at_model_threshold": dict(zip(sizes, (0.02, 0.1, 0.4, 0.9))),
                           "threshold_for_0.01": dict(zip(sizes, (0.5, 0.59, 0.64, 0.7)))})
    assert "0.100 among 50" in note and "0.700 for 1000" in note and note.endswith("(`facerec.strangers.json`: made up).")
    assert strangers_note(None).startswith("not measured")


def test_the_cards_int8_sentence():
    from trainer.release import int8_note

    note = int8_note({"source": "min/max over 128 crops", "held_out_images": 3013, "min_cosine": 0.99536,
                      "fp32": {"tar@far=0.001": 0.7505, "top1": 0.9490}, "int8": {"tar@far=0.001": 0.7514, "top1": 0.9485}})
    assert "cosine >= 0.9954 to fp32" in note and "0.751 (fp32 0.750)" in note and "0.949 (fp32 0.949)" in note
    assert int8_note({"skipped": "int8 is not close enough"}) == "not offered (int8 is not close enough)."


# ---- distillation from a teacher ------------------------------------------------------------------

def test_relational_distillation_is_zero_for_the_same_geometry_and_projection_learns():
    from trainer.distill import ProjectedDistillation, RelationalDistillation, build_distiller

    g = torch.Generator().manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(16, 128, generator=g), dim=1)
    have = torch.ones(16, dtype=torch.bool)
    same_geometry = torch.cat([teacher, torch.zeros(16, 384)], dim=1)  # 512-d, identical cosines
    relation = RelationalDistillation()
    assert float(relation(same_geometry, teacher, have)) == pytest.approx(0.0, abs=1e-6)
    other = torch.nn.functional.normalize(torch.randn(16, 512, generator=g), dim=1)
    assert float(relation(other, teacher, have)) > 0.01
    assert float(relation(other, teacher, torch.zeros(16, dtype=torch.bool))) == 0.0  # no teacher, no term

    projection = ProjectedDistillation()
    opt = torch.optim.SGD(projection.parameters(), lr=0.5)
    before = projection(same_geometry, teacher, have).item()
    for _ in range(50):
        loss = projection(same_geometry, teacher, have)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert projection(same_geometry, teacher, have).item() < 0.5 * before
    assert build_distiller("none") is None
    with pytest.raises(ValueError, match="relation"):
        build_distiller("attention")


def test_both_terms_are_the_projected_one_plus_a_share_of_the_relational_one():
    from trainer.distill import ProjectedAndRelational, RelationalDistillation, build_distiller

    g = torch.Generator().manual_seed(1)
    student = torch.randn(12, 512, generator=g)
    teacher = torch.nn.functional.normalize(torch.randn(12, 128, generator=g), dim=1)
    have = torch.arange(12) % 3 != 0
    both = build_distiller("both", relation_share=2.5)
    assert isinstance(both, ProjectedAndRelational)  # the trainer fits its projection at a warm start
    with torch.no_grad():
        projected = super(ProjectedAndRelational, both).forward(student, teacher, have)
        relational = RelationalDistillation()(student, teacher, have)
        assert float(both(student, teacher, have)) == pytest.approx(float(projected + 2.5 * relational), rel=1e-6)
    assert float(relational) > 0.0


@pytest.mark.parametrize("kind", ["projection", "both"])
def test_fit_with_a_teacher_cache_adds_the_distillation_term(synthetic_celeba, tmp_path, kind):
    """The trainer finds teacher vectors by image path in the cache `trainer teacher` writes
    (written here directly: dlib itself is tested below where it is installed)."""
    from recognizer.preprocess import AlignmentRecipe
    from trainer import teacher as teacher_mod

    dataset = discover(synthetic_celeba)
    key = teacher_mod.cache_key(dataset, AlignmentRecipe().crop_box)
    rng = np.random.default_rng(0)
    per_identity = {ident: rng.normal(size=128) for ident in set(dataset.identities)}
    vectors = np.stack([per_identity[i] + 0.1 * rng.normal(size=128) for i in dataset.identities]).astype(np.float32)
    done = np.arange(len(vectors)) % 4 != 0  # a partly filled cache: those rows get no term
    teacher_mod._save(tmp_path / "teacher" / f"{key}-0of1.npz", vectors, done)

    config = get_config("tiny", epochs=1, distill=kind, distill_weight=1.0)
    trainer = Trainer(synthetic_celeba, config, tmp_path / "run", cache_dir=None, teacher_cache=tmp_path)
    rows = trainer.splits.train
    assert 0 < trainer.teacher_have[rows].sum() < len(rows)
    assert np.allclose(np.linalg.norm(trainer.teacher[trainer.teacher_have], axis=1), 1.0, atol=1e-5)
    trainer.fit()
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 < history[0]["distill_loss"] <= 2.0
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["distiller"]


def test_fit_learns_the_teacher_views_it_is_told_to(synthetic_celeba, tmp_path):
    """teacher_views=mirror reads the mirror-averaged cache (`trainer teacher --views mirror`), never
    the plain one, and an unknown view is refused by name."""
    from recognizer.preprocess import AlignmentRecipe
    from trainer import teacher as teacher_mod

    dataset = discover(synthetic_celeba)
    box = AlignmentRecipe().crop_box
    rng = np.random.default_rng(1)
    plain = rng.normal(size=(len(dataset.paths), 128)).astype(np.float32)
    mirror = rng.normal(size=(len(dataset.paths), 128)).astype(np.float32)
    teacher_mod._save(tmp_path / "teacher" / f"{teacher_mod.cache_key(dataset, box)}-0of1.npz", plain,
                      np.ones(len(plain), bool))
    teacher_mod._save(tmp_path / "teacher" / f"{teacher_mod.cache_key(dataset, box, 'mirror')}-0of1.npz", mirror,
                      np.ones(len(mirror), bool))
    assert teacher_mod.cache_key(dataset, box, "mirror") != teacher_mod.cache_key(dataset, box)
    config = get_config("tiny", epochs=1, distill="projection", distill_weight=1.0, teacher_views="mirror")
    trainer = Trainer(synthetic_celeba, config, tmp_path / "run", cache_dir=None, teacher_cache=tmp_path)
    expected = mirror - mirror.mean(0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    by_path = {str(p): v for p, v in zip(dataset.paths, expected)}
    got = np.stack([by_path[str(p)] for p in trainer.paths])
    assert np.allclose(trainer.teacher, got, atol=1e-5)
    with pytest.raises(ValueError, match="teacher_views 'jitter'"):
        Trainer(synthetic_celeba, get_config("tiny", epochs=1, distill="projection", distill_weight=1.0,
                                             teacher_views="jitter"), tmp_path / "bad", cache_dir=None,
                teacher_cache=tmp_path)


def test_the_spread_out_term_sees_only_pairs_of_different_people():
    from trainer.spread import SpreadOut

    term = SpreadOut()
    orthogonal = torch.eye(4, 16)
    assert float(term(orthogonal, torch.tensor([0, 1, 2, 3]))) == 0.0
    alike = torch.nn.functional.normalize(torch.ones(4, 16) + 0.01 * torch.eye(4, 16), dim=1)
    assert float(term(alike, torch.tensor([0, 1, 2, 3]))) > 0.9  # strangers with cosine ~1
    assert float(term(alike, torch.tensor([5, 5, 5, 5]))) == 0.0  # one person: no pair counts
    # one-image people (-1) are strangers to each other and to everyone
    assert float(term(alike, torch.tensor([-1, -1, 5, 5]))) == pytest.approx(float(term(alike, torch.tensor([0, 1, 2, 2]))))
    # 1/d is the mean squared cosine of random directions: no push below it
    spread = torch.nn.functional.normalize(torch.randn(64, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    assert float(term(spread, torch.arange(64))) < 0.01


def test_fit_with_the_spread_out_term_logs_it(synthetic_celeba, tmp_path):
    config = get_config("tiny", epochs=1, spread_weight=1.0)
    Trainer(synthetic_celeba, config, tmp_path / "run", cache_dir=None).fit()
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 < history[0]["spread_loss"] < 1.0 and "distill_loss" not in history[0]


def test_the_teacher_cache_is_found_however_the_folder_is_typed(synthetic_celeba, tmp_path, monkeypatch):
    """`trainer teacher --data /abs/celeba1k` then `fit --data ../rel/celeba1k`: the same cache
    (once a different key, and every celeba1k image silently went untaught). A source with no
    cache at all is an error naming the command that fills it."""
    from recognizer.preprocess import AlignmentRecipe
    from trainer import teacher as teacher_mod

    absolute = discover(synthetic_celeba)
    key = teacher_mod.cache_key(absolute, AlignmentRecipe().crop_box)
    vectors = np.random.default_rng(0).normal(size=(len(absolute.paths), 128)).astype(np.float32)
    teacher_mod._save(tmp_path / "teacher" / f"{key}-0of1.npz", vectors, np.ones(len(vectors), bool))
    monkeypatch.chdir(synthetic_celeba.parent)
    relative = Path(synthetic_celeba.name)
    typed = discover(relative)
    assert not typed.paths[0].is_absolute()
    _, have, _ = teacher_mod.targets_for(typed.paths, [relative], tmp_path)
    assert have.all()
    other = tmp_path / "other"
    shutil.copytree(synthetic_celeba, other)
    with pytest.raises(ValueError, match="trainer teacher --data"):
        teacher_mod.targets_for(typed.paths, [relative, other], tmp_path)


def test_a_warm_start_fits_the_projection_to_the_teacher(tiny_model, synthetic_celeba, tmp_path, capsys):
    """`fit --init` with a projected teacher: the 512->128 map starts at the least-squares fit of
    the warm backbone to the teacher, so the term starts far below a random map's."""
    from recognizer.preprocess import AlignmentRecipe
    from trainer import teacher as teacher_mod

    dataset = discover(synthetic_celeba)
    key = teacher_mod.cache_key(dataset, AlignmentRecipe().crop_box)
    # A teacher the student can match: a fixed linear view of the source model's own embeddings.
    source = Trainer(synthetic_celeba, get_config("tiny", epochs=1), tmp_path / "src", cache_dir=None, init=tiny_model)
    from trainer.fit import embed_crops

    emb = embed_crops(source.model, source.crops, source.recipe, source.config, source.device, source.precision)
    vectors = (emb @ np.random.default_rng(0).normal(size=(512, 128))).astype(np.float32)
    teacher_mod._save(tmp_path / "teacher" / f"{key}-0of1.npz", vectors, np.ones(len(vectors), bool))
    config = get_config("tiny", epochs=1, distill="projection", distill_weight=1.0)
    cold = Trainer(synthetic_celeba, config, tmp_path / "cold", cache_dir=None, teacher_cache=tmp_path)
    warm = Trainer(synthetic_celeba, config, tmp_path / "warm", cache_dir=None, teacher_cache=tmp_path, init=tiny_model)
    rows = warm.splits.train
    student = torch.from_numpy(emb[rows])
    teacher, have = torch.from_numpy(warm.teacher[rows]), torch.from_numpy(warm.teacher_have[rows])
    with torch.no_grad():
        random_map, fitted = cold.distiller(student, teacher, have).item(), warm.distiller(student, teacher, have).item()
    assert fitted < 0.2 and random_map > 0.5, (fitted, random_map)  # seen: 0.07 vs 1.02 (24 images fitted, 54 here)
    assert "projection fitted to the teacher" in capsys.readouterr().out


def test_single_image_people_are_taught_by_the_teacher_alone(synthetic_celeba, tmp_path):
    """distill_singletons keeps an extra source's one-image person as a teacher-only row: in the
    batches, with a teacher vector, but with no CosFace class."""
    from recognizer.preprocess import AlignmentRecipe
    from trainer import teacher as teacher_mod

    extra = _extra_source(tmp_path)
    dataset = discover(extra)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(dataset.paths), 128)).astype(np.float32)
    key = teacher_mod.cache_key(dataset, AlignmentRecipe().crop_box)
    teacher_mod._save(tmp_path / "teacher" / f"{key}-0of1.npz", vectors, np.ones(len(vectors), bool))
    main = discover(synthetic_celeba)  # every source needs a cache (none at all is an error)
    teacher_mod._save(tmp_path / "teacher" / f"{teacher_mod.cache_key(main, AlignmentRecipe().crop_box)}-0of1.npz",
                      rng.normal(size=(len(main.paths), 128)).astype(np.float32), np.ones(len(main.paths), bool))
    config = get_config("tiny", epochs=1, distill="relation", distill_weight=10.0, distill_singletons=True)
    with pytest.raises(ValueError, match="distill_singletons"):
        Trainer(synthetic_celeba, get_config("tiny", distill_singletons=True), tmp_path / "bad", cache_dir=None)
    base = Trainer(synthetic_celeba, get_config("tiny", epochs=1), tmp_path / "base", cache_dir=None)
    trainer = Trainer(synthetic_celeba, config, tmp_path / "run", cache_dir=None, extra_dirs=[extra],
                      teacher_cache=tmp_path)
    assert len(trainer.splits.train) == len(base.splits.train) + 6  # all six extra images
    assert len(trainer.class_index) == len(base.class_index) + 2  # 203 has no class
    only = trainer.train_targets == -1
    assert only.sum() == 1 and trainer.paths[trainer.splits.train[only][0]].name == "203_0.jpg"
    assert trainer.teacher_have[trainer.splits.train[only]].all()
    assert trainer.extra_summary[0]["teacher_only_images"] == 1
    trainer.fit()
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(history[0]["loss"]) and history[0]["distill_loss"] > 0


def test_dlib_teacher_fills_its_cache_in_shards(tmp_path):
    pytest.importorskip("dlib", reason="dlib is a training-time extra: pip install --no-deps -r bench/requirements.txt")
    from trainer import teacher as teacher_mod

    root = tmp_path / "src"
    (root / "img_align_celeba").mkdir(parents=True)
    rows = []
    for ident in (1, 2):
        for n in range(2):
            synthetic_face(ident, n).save(root / "img_align_celeba" / f"{ident}_{n}.jpg")
            rows.append(f"{ident}_{n}.jpg {ident}\n")
    (root / "identity_CelebA.txt").write_text("".join(rows))
    first = teacher_mod.fill(root, tmp_path, (0, 2))
    vectors, have = teacher_mod.load(discover(root), tmp_path)
    assert first["embedded"] == 2 and have.tolist() == [True, False, True, False]
    teacher_mod.fill(root, tmp_path, (1, 2))
    vectors, have = teacher_mod.load(discover(root), tmp_path)
    assert have.all() and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert teacher_mod.fill(root, tmp_path, (0, 2))["embedded"] == 0  # resumed: nothing left to do


def test_the_card_names_the_exact_fit_command_and_the_teacher():
    from trainer.configs import get_config
    from trainer.release import distill_note, fit_command

    config = get_config("cpu", epochs=12, distill="projection", distill_weight=10.0, distill_singletons=True)
    training = {"config": config.to_dict(), "epochs_done": 12,
                "extra_sources": [{"data": "/x/test_crops", "images": 5, "identities": 2}]}
    line = fit_command(training)
    assert line.startswith("python -m trainer fit --data ../shared/data/celeba1k --extra <prepared test_crops> "
                           "--config cpu --epochs 12 ")
    assert "--set distill=projection" in line and "--set distill_weight=10.0" in line
    assert "--set distill_singletons=True" in line and "--set lr" not in line  # only what differs
    assert "input_size" not in line and "input_size" not in fit_command(json.loads(json.dumps(training)))
    odd = {**training, "config": {**training["config"], "input_size": [112, 96]}}
    assert "--set input_size=112,96" in fit_command(odd)  # the form --set parses
    assert "512->128" in distill_note(config.to_dict()) and distill_note(get_config("cpu").to_dict()) == ""


def test_warm_start_loads_the_backbone_imprints_the_head_and_is_recorded(tiny_model, synthetic_celeba, tmp_path,
                                                                          capsys):
    """`fit --init MODEL`: the backbone starts as MODEL's, each class centre as the mean of its
    images' embeddings (so the head classifies before any step), and the run says where it began."""
    from trainer.release import fit_command, init_note

    source = ModelArtifact.load(tiny_model)
    trainer = Trainer(synthetic_celeba, get_config("tiny", epochs=1), tmp_path / "ft", cache_dir=None, init=tiny_model)
    assert "WARNING" not in capsys.readouterr().out  # same split: nothing held out was seen
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, source.state_dict[name].float()), name
    cold = Trainer(synthetic_celeba, get_config("tiny", epochs=1), tmp_path / "cold", cache_dir=None)
    train = trainer.splits.train
    targets = torch.from_numpy(trainer.train_targets)

    def head_accuracy(t: Trainer) -> float:
        from trainer.fit import embed_crops

        emb = embed_crops(t.model, t.crops[train], t.recipe, t.config, t.device, t.precision)
        return float((t.head.cosines(torch.from_numpy(emb)).argmax(1) == targets).float().mean())

    warm_acc, cold_acc = head_accuracy(trainer), head_accuracy(cold)
    assert warm_acc >= 0.6 and warm_acc > cold_acc + 0.3, (warm_acc, cold_acc)  # seen: 0.67 vs 0.17 (chance)
    artifact = trainer.fit()
    assert artifact.training["init"]["version"] == source.version
    assert artifact.training["init"]["epochs_done"] == source.training["epochs_done"]
    assert f"--init <model {source.version}>" in fit_command(artifact.training)
    assert f"fine-tuned from model {source.version} (2 epochs" in init_note(artifact.training["init"])
    resumed = Trainer(synthetic_celeba, get_config("tiny", epochs=1), tmp_path / "ft", resume=True, cache_dir=None)
    assert resumed.init["version"] == source.version
    grandchild = Trainer(synthetic_celeba, get_config("tiny", epochs=1), tmp_path / "ft2", cache_dir=None,
                         init=tmp_path / "ft" / "model.pt")  # a fine-tune of the fine-tune keeps the chain
    assert grandchild.init["version"] == artifact.version and grandchild.init["init"]["version"] == source.version
    assert (f"fine-tuned from model {artifact.version} (1 epochs" in init_note(grandchild.init)
            and f"itself fine-tuned from model {source.version} (2 epochs" in init_note(grandchild.init))
    Trainer(synthetic_celeba, get_config("tiny", epochs=1, seed=7), tmp_path / "seed7", cache_dir=None, init=tiny_model)
    out = capsys.readouterr().out
    assert "WARNING" in out and "other seed" in out, out
    with pytest.raises(ValueError, match="input"):
        Trainer(synthetic_celeba, get_config("tiny", input_size=(64, 56)), tmp_path / "bad", cache_dir=None,
                init=tiny_model)


def test_train_from_freezes_the_earlier_blocks_weights_and_statistics(tiny_model, synthetic_celeba, tmp_path,
                                                                      capsys):
    """`--set train_from=mixed_7a`: a fine-tune changes that block and every later one, and leaves
    every earlier block exactly as the model it started from (weights and BatchNorm statistics:
    frozen blocks run in eval mode), and the card's fit line says so."""
    from recognizer.embedder import build_backbone
    from trainer.release import fit_command

    source = ModelArtifact.load(tiny_model)
    config = get_config("tiny", epochs=1, train_from="mixed_7a")
    artifact = Trainer(synthetic_celeba, config, tmp_path / "ft", cache_dir=None, init=tiny_model).fit()
    blocks = [name for name, _ in build_backbone().named_children()]
    before = blocks[:blocks.index("mixed_7a")]
    changed = {name.split(".")[0] for name, tensor in artifact.state_dict.items()
               if tensor.is_floating_point() and not torch.equal(tensor.float(), source.state_dict[name].float())}
    assert changed and not changed & set(before), sorted(changed & set(before))
    assert {"mixed_7a", "repeat_3", "last_linear"} <= changed
    assert "--set train_from=mixed_7a" in fit_command(artifact.training)
    assert "WARNING" not in capsys.readouterr().out
    Trainer(synthetic_celeba, get_config("tiny", train_from="mixed_7a"), tmp_path / "cold", cache_dir=None)
    assert "without --init" in capsys.readouterr().out  # frozen random blocks: said, not refused (timing)
    with pytest.raises(ValueError, match="not a block of the backbone.*mixed_7a"):
        Trainer(synthetic_celeba, get_config("tiny", train_from="mixed7a"), tmp_path / "bad", cache_dir=None)
