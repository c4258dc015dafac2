"""``trainer prepare``: fetched trees into the CelebA layout, in shards, never with excluded people."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from trainer.data import discover
from trainer.prepare import prepare


def _half_res_tree(root, n: int) -> tuple:
    """n synthetic 89x109 frames (half-res needs no detector) and their labels file."""
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        cv2.imwrite(str(src / f"{i:06d}.jpg"), rng.integers(0, 255, (109, 89, 3), dtype=np.uint8))
        lines.append(f"{i:06d}.jpg {1000 + i // 2}\n")
    labels = root / "labels.txt"
    labels.write_text("".join(lines))
    return src, labels


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_every_shard_order_leaves_the_whole_identity_list(tmp_path, order):
    src, labels = _half_res_tree(tmp_path, 7)
    out = tmp_path / "out"
    for k in order:  # the shard that ends last must not matter (it once left half the list)
        prepare(src, labels, "half-res", out, shard=(k, 2))
    dataset = discover(out)
    assert len(dataset.paths) == 7
    assert sorted(p.name for p in dataset.paths) == [f"{i:06d}.jpg" for i in range(7)]
    assert not list(out.glob("*.part"))
    frame = cv2.imread(str(dataset.paths[0]))
    assert frame.shape == (218, 178, 3)


def test_an_excluded_identity_is_refused_and_nothing_is_written(tmp_path):
    src, labels = _half_res_tree(tmp_path, 4)
    exclude = tmp_path / "excluded.txt"
    exclude.write_text("1001\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="excluded"):
        prepare(src, labels, "half-res", out, exclude=exclude)
    assert not out.exists()


@pytest.mark.parametrize("text", ["2/2", "-1/2", "0/0", "1", "a/b"])
def test_a_shard_outside_0_to_n_minus_1_is_refused_by_the_cli(text, capsys):
    # ``2/2`` once looked right and silently left image 0 out of both shards (``1/2`` and ``2/2``).
    from trainer.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["teacher", "--data", "unused", f"--shard={text}"])  # "=": "-1/2" reaches the parser
    assert exit_.value.code == 2
    assert f"argument --shard: {text!r}" in capsys.readouterr().err  # our parser said why


def test_a_shard_counts_from_zero():
    from trainer.data import parse_shard

    assert [parse_shard("0/2"), parse_shard("1/2")] == [(0, 2), (1, 2)]
