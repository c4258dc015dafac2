"""The identity bootstrap behind the card's intervals and ``trainer compare``: pure functions on
scores and labels, plus the command on two tiny models."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trainer import bootstrap, metrics
from trainer.__main__ import main
from trainer.release import _with_interval


def _embeddings(labels: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Unit vectors: one random centre per identity plus ``noise``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(labels.max() + 1, 16))
    e = centres[labels] + noise * rng.normal(size=(len(labels), 16))
    return e / np.linalg.norm(e, axis=1, keepdims=True)


LABELS = np.repeat(np.arange(30), 6)


def test_with_every_identity_counted_once_it_is_the_plain_tar():
    e = _embeddings(LABELS, 0.8, 0)
    table, scores = bootstrap.pair_table(LABELS), bootstrap.pair_scores_all(e)
    pos, neg = metrics.all_pairs(e, LABELS)
    neg_sorted = np.sort(scores[~table.positive])[::-1]
    for far in (1e-1, 1e-2, 1e-3):
        plain = metrics.tpr_at_fpr(pos, neg, far)[0]
        assert bootstrap.weighted_tar(scores[table.positive], np.ones(len(pos)), neg_sorted,
                                      np.ones(len(neg)), far) == pytest.approx(plain)


def test_a_draw_counts_like_copies_of_the_people_drawn():
    """Weights equal the plain TAR on a set where each identity drawn k times is k people (pairs
    between two copies of one person left out): what resampling identities means."""
    labels = np.repeat(np.arange(12), 4)
    e = _embeddings(labels, 1.0, 3)
    table, scores = bootstrap.pair_table(labels), bootstrap.pair_scores_all(e)
    counts = np.random.default_rng(4).multinomial(12, np.ones(12) / 12).astype(float)
    pos_w = counts[table.first[table.positive]]
    neg_w = counts[table.first[~table.positive]] * counts[table.second[~table.positive]]
    copies_pos = np.repeat(scores[table.positive], pos_w.astype(int))
    copies_neg = np.repeat(scores[~table.positive], neg_w.astype(int))
    order = np.argsort(-scores[~table.positive], kind="stable")
    for far in (0.05, 0.01, 0.002):
        expected = metrics.tpr_at_fpr(copies_pos, copies_neg, far)[0]
        got = bootstrap.weighted_tar(scores[table.positive], pos_w, scores[~table.positive][order],
                                     neg_w[order], far)
        assert got == pytest.approx(expected)


def test_a_model_against_itself_differs_by_nothing_and_a_better_one_is_ahead():
    table = bootstrap.pair_table(LABELS)
    clean = bootstrap.pair_scores_all(_embeddings(LABELS, 0.6, 1))
    noisy = bootstrap.pair_scores_all(_embeddings(LABELS, 1.4, 1))
    same = bootstrap.compare_tar(table, clean, clean, 1e-2, rounds=50)
    assert same["a_minus_b"]["ci90"] == [0.0, 0.0] and same["a_ahead"] == 0.5
    pos, neg = clean[table.positive], clean[~table.positive]
    assert same["a"]["point"] == pytest.approx(metrics.tpr_at_fpr(pos, neg, 1e-2)[0]) and same["a_minus_b"]["point"] == 0
    better = bootstrap.compare_tar(table, clean, noisy, 1e-2, rounds=200)
    assert better["a_ahead"] > 0.95 and better["a_minus_b"]["ci90"][0] > 0
    # paired: the difference varies less than either figure
    assert better["a_minus_b"]["sd"] < max(better["a"]["sd"], better["b"]["sd"])


def test_fewer_identities_give_a_wider_interval():
    def width(n_ids: int) -> float:
        labels = np.repeat(np.arange(n_ids), 6)
        s = bootstrap.pair_scores_all(_embeddings(labels, 1.0, 2))
        ci = bootstrap.summarise(bootstrap.bootstrap_tar(bootstrap.pair_table(labels), [s], 1e-2, 200)[:, 0])["ci90"]
        return ci[1] - ci[0]
    assert width(10) > width(80)


def test_distractors_count_once_and_queries_by_their_identity():
    ids = np.array(["a", "a", "b", "b", "b"])
    table = bootstrap.query_distractor_table(ids, distractors=3)
    assert int(table.positive.sum()) == 1 + 3 and len(table.positive) == 4 + 5 * 3
    assert (table.second[~table.positive] == -1).all()
    assert table.first[~table.positive].tolist() == [0] * 6 + [1] * 9
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0.5, 1, 4), rng.uniform(0, 0.6, 15)])
    draws = bootstrap.bootstrap_tar(table, [scores], 0.1, rounds=30)
    assert draws.shape == (30, 1) and ((draws >= 0) & (draws <= 1)).all()


def test_the_card_shows_an_interval_only_where_one_was_measured():
    assert _with_interval(0.7506, {"ci90": [0.66, 0.831]}) == "0.751 (0.660-0.831)"
    assert _with_interval(0.7506, None) == "0.751"


def test_compare_measures_two_models_on_their_shared_held_out_people(tiny_model, tmp_path, synthetic_celeba, capsys):
    from recognizer.artifact import ModelArtifact

    other = ModelArtifact.load(tiny_model)
    other.state_dict = {k: (v * 0.9 if k == "last_linear.weight" else v) for k, v in other.state_dict.items()}
    other.save(tmp_path / "b.pt")
    out = tmp_path / "cmp.json"
    assert main(["compare", "--model", str(tiny_model), "--model", str(tmp_path / "b.pt"), "--celeba1k",
                 str(synthetic_celeba), "--rounds", "20", "--json", str(out), "--cache", str(tmp_path / "c")]) == 0
    report = json.loads(out.read_text())
    row = report["val_open"]["tar@far=0.001"]
    assert report["rounds"] == 20 and report["val_open"]["identities"] >= 2
    assert 0 <= row["a"]["mean"] <= 1 and row["a"]["ci90"][0] <= row["a"]["ci90"][1]
    assert "| val_open tar@far=0.001 |" in capsys.readouterr().out


def test_compare_refuses_models_split_differently(tiny_model, tmp_path, synthetic_celeba, capsys):
    from recognizer.artifact import ModelArtifact

    other = ModelArtifact.load(tiny_model)
    other.training = {**other.training, "config": {**other.training["config"], "seed": 99}}
    other.save(tmp_path / "b.pt")
    assert main(["compare", "--model", str(tiny_model), "--model", str(tmp_path / "b.pt"), "--celeba1k",
                 str(synthetic_celeba), "--cache", str(tmp_path / "c")]) == 2
    assert "split differently (seed" in capsys.readouterr().err
    assert main(["compare", "--model", str(tiny_model), "--celeba1k", str(synthetic_celeba)]) == 2
