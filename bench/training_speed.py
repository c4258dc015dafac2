"""Training throughput: the real trainer step vs the model's raw forward+backward, fp32 vs bf16.

"trainer" times ``trainer.fit.Trainer.train_epoch`` itself over N steps (cached crops ->
tensor -> augmentation -> forward -> CosFace loss -> backward -> SGD step -> bookkeeping); "raw"
runs the same model, head and optimizer on a random tensor of the same shape and batch size.
Their ratio is what the data pipeline costs; if it is large, speeding up the model will not
speed up training. Ways: fp32 in plain NCHW, fp32 with channels_last (what the ``cpu`` config
trains in where the CPU lacks native bf16), and bf16 autocast + channels_last (the ``cpu``
config where it has it). bf16 is measured only on CPUs with native bf16 unless ``--ways`` names
it: emulated, one step takes about a minute.

Per-step times come from an optimizer post-step hook, so the trainer code runs unmodified.
Real and raw chunks alternate (``rounds``, and which goes first) so both see the same background load.
Uses celeba1k from the data folder, or a synthetic dataset in CelebA layout when it is missing.
``--train-from BLOCK`` times a fine-tune of BLOCK and the blocks after it (``trainer fit --set
train_from=BLOCK``): the frozen bottom runs forward only.

    OMP_NUM_THREADS=1 python -m bench.training_speed --quick
    python -m bench.training_speed --ways fp32-cl --train-from mixed_7a
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainer.configs import get_config
from trainer.fit import Trainer
from trainer.precision import autocast, native_bf16

from . import common
from .datasets import make_synthetic_celeba

PRECISIONS = {"fp32": {"precision": "fp32", "channels_last": False},
              "fp32-cl": {"precision": "fp32", "channels_last": True},
              "bf16": {"precision": "bf16", "channels_last": True}}


def default_ways() -> list[str]:
    """Every way this CPU trains in at a sane speed: bf16 only where it is native."""
    return [w for w in PRECISIONS if w != "bf16" or native_bf16()]


def trainer_steps(trainer: Trainer, steps: int, warmup: int, epoch: int) -> list[float]:
    """Seconds per step of ``train_epoch`` (post-step timestamps; the first ``warmup`` dropped)."""
    stamps: list[float] = []
    handle = trainer.optimizer.register_step_post_hook(lambda *_: stamps.append(time.perf_counter()))
    trainer.steps_per_epoch = steps + warmup + 1  # read by train_epoch and the LR lambda
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):  # tqdm's bar
            trainer.train_epoch(epoch)
    finally:
        handle.remove()
    return list(np.diff(stamps)[warmup:])


def cover_steps(trainer: Trainer, steps: int) -> None:
    """Repeat a small (synthetic) training split until ``steps`` full batches fit in one epoch:
    past its end ``train_epoch`` would get empty batches. Timing only; the rows stay valid."""
    reps = -(-steps * trainer.config.batch_size // len(trainer.splits.train))
    if reps > 1:
        trainer.splits = dataclasses.replace(trainer.splits, train=np.tile(trainer.splits.train, reps))
        trainer.train_targets = np.tile(trainer.train_targets, reps)


def raw_steps(trainer: Trainer, steps: int, warmup: int) -> list[float]:
    """Seconds per step of model + CosFace head + SGD on a random batch (no data pipeline)."""
    config, device = trainer.config, trainer.device
    height, width = config.input_size
    batch = torch.randn(config.batch_size, 3, height, width, device=device)
    if config.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, trainer.head.weight.shape[0], (config.batch_size,), device=device)
    trainer.train_mode()

    def step() -> None:
        with autocast(trainer.precision, device):
            embeddings = trainer.model(batch)
        loss, cosines = trainer.head(embeddings.float(), targets)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        loss.item()  # the trainer syncs here too (and on CUDA this waits for the step)
        int((cosines.argmax(1) == targets).sum())

    return common.time_calls(step, steps, warmup)


def run(args: argparse.Namespace) -> dict:
    common.set_threads(args.threads)
    celeba = common.data_dir(args, "celeba1k")
    tmp = tempfile.TemporaryDirectory(prefix="training_speed-")
    if celeba is None:
        celeba = make_synthetic_celeba(Path(tmp.name) / "data", *((12, 12) if args.quick else (100, 20)))
        source = f"SYNTHETIC FALLBACK: random images in CelebA layout ({celeba}); no celeba1k in {args.data}"
    else:
        source = f"celeba1k at {celeba}" + (f" (first {args.identities} identities)" if args.identities else "")
    print(f"data: {source}")
    rows = []
    for name in args.ways:
        overrides = PRECISIONS[name]
        config = get_config(args.config, limit_identities=args.identities, batch_size=args.batch_size,
                            open_identities=2 if args.identities or "SYNTHETIC" in source else None,
                            train_from=args.train_from, **overrides)
        cache = args.crop_cache or (common.cache_dir() if args.quick else common.ROOT / ".cache")
        cache = None if "SYNTHETIC" in source else cache
        trainer = Trainer(celeba, config, Path(tmp.name) / f"run-{name}", cache_dir=cache,
                          device=args.device, threads=args.threads)
        cover_steps(trainer, args.steps + args.warmup + 1)
        real: list[float] = []
        raw: list[float] = []
        for r in range(args.rounds):  # alternate which goes first: load drifts
            if r % 2:
                raw += raw_steps(trainer, args.steps, args.warmup)
            real += trainer_steps(trainer, args.steps, args.warmup, epoch=r + 1)
            if not r % 2:
                raw += raw_steps(trainer, args.steps, args.warmup)
        for loop, times in (("trainer", real), ("raw", raw)):
            st = common.stats(times)
            rows.append({"precision": name, "loop": loop, "batch_size": config.batch_size,
                         "input_size": list(config.input_size), "device": str(trainer.device),
                         "step_s": st, "images_per_s": config.batch_size / st["median"]})
        print(f"  {name} done", flush=True)
        del trainer
    tmp.cleanup()
    return {"source": source, "config": args.config, "threads": args.threads, "rows": rows, "ways": args.ways,
            "train_from": args.train_from,
            "cpu_native_bf16": native_bf16()}


def tables(result: dict) -> str:
    by = {(r["precision"], r["loop"]): r for r in result["rows"]}
    main = [[r["precision"], r["loop"], r["batch_size"], common.ms(r["step_s"]["median"]),
             common.ms(r["step_s"]["p95"]), f"{r['images_per_s']:.1f}", r["step_s"]["n"]] for r in result["rows"]]
    first = result["train_from"]
    out = [f"trained: {first} and the blocks after it" if first else "trained: every block",
           common.markdown_table(["precision", "loop", "batch", "step ms (median)", "p95", "images/s", "steps"],
                                 main, align="llrrrrr")]
    compare = []
    for p in result["ways"]:
        real, raw = by[(p, "trainer")], by[(p, "raw")]
        compare.append([f"{p}: data pipeline overhead (raw images/s / trainer images/s)",
                        common.ratio(raw["images_per_s"], real["images_per_s"]),
                        f"{100 * (1 - real['images_per_s'] / raw['images_per_s']):.0f}% of a trainer step"])
    for p in result["ways"][1:]:
        for loop in ("trainer", "raw"):
            compare.append([f"{p} speed-up over fp32 ({loop})",
                            common.ratio(by[(p, loop)]["images_per_s"], by[(result["ways"][0], loop)]["images_per_s"]),
                            ""])
    out.append(common.markdown_table(["comparison", "ratio", "note"], compare, align="lrl"))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--config", default="cpu", help="trainer config to take the model/optimizer settings from")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's (quick: 32)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round and loop (quick 2, full 20)")
    p.add_argument("--rounds", type=int, default=None, help="alternating trainer/raw rounds (quick 2, full 4)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--crop-cache", default=None, help="decoded-crop cache (default: the trainer's .cache/, which "
                   "already holds celeba1k's crops after training; quick: the bench cache in /tmp)")
    p.add_argument("--ways", default=None, help=f"comma-separated, of {', '.join(PRECISIONS)} (default: fp32, "
                   "fp32-cl, and bf16 where the CPU has native bf16); the first is the reference")
    p.add_argument("--train-from", default="", help="first trained backbone block (trainer fit's train_from; "
                   "default: every block trains)")
    args = p.parse_args(argv)
    args.ways = args.ways.split(",") if args.ways else default_ways()
    unknown = [w for w in args.ways if w not in PRECISIONS]
    if unknown:
        p.error(f"unknown --ways {unknown}; choose from {list(PRECISIONS)}")
    args.batch_size = args.batch_size or (32 if args.quick else None)
    args.steps = args.steps or (2 if args.quick else 20)
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.warmup = 1 if args.quick else 2
    args.identities = 20 if args.quick else None
    start = time.perf_counter()
    result = run(args)
    return common.finish("training_speed", args, result, tables(result), start)


if __name__ == "__main__":
    raise SystemExit(main())
