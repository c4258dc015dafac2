"""bench.training_speed times more steps than a small synthetic set holds (the lent GPU's case)."""
from __future__ import annotations

from bench.training_speed import cover_steps, trainer_steps
from trainer.configs import get_config
from trainer.fit import Trainer


def test_a_small_set_is_repeated_until_every_timed_step_has_a_full_batch(synthetic_celeba, tmp_path):
    trainer = Trainer(synthetic_celeba, get_config("tiny"), tmp_path / "run", cache_dir=None)
    rows = len(trainer.splits.train)
    steps = rows // trainer.config.batch_size + 3  # more steps than one pass over the split
    cover_steps(trainer, steps + 2)
    assert len(trainer.splits.train) >= (steps + 2) * trainer.config.batch_size
    assert len(trainer.train_targets) == len(trainer.splits.train)
    assert len(trainer_steps(trainer, steps, warmup=1, epoch=1)) == steps
