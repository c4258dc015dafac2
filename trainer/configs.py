"""Named training configurations. Pick one with ``--config``; override epochs with ``--epochs``."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class TrainConfig:
    name: str
    input_size: tuple[int, int] = (96, 80)  # (height, width): the 83x100 crop, near its own size
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    # CosFace: s=64, m=0.35 from the paper does not learn from scratch here (seen: loss rose,
    # accuracy at chance); s=32 with the margin ramped from 0 over the first epochs does.
    scale: float = 32.0
    margin: float = 0.35
    margin_warmup_epochs: float = 2.0
    dropout: float = 0.2
    # "auto": bf16 autocast where the CPU has native bf16, else fp32 (trainer/precision.py);
    # "fp32" | "bf16" (CPU autocast) | "amp" (CUDA fp16/bf16) force one.
    precision: str = "auto"
    channels_last: bool = True
    open_identities: int = 50  # identities held out entirely (open-set validation, threshold)
    val_per_identity: int = 2  # images held out of each training identity (closed-set)
    gallery_per_identity: int = 5  # training images per identity in the per-epoch closed-set gallery
    limit_identities: int | None = None
    augment: bool = True
    # Probability of erasing one random rectangle of a training image. Off: at 0.5 with the cpu
    # config's 16 epochs, held-out top-1 fell from 0.840 to 0.797 (it learns slower; see BENCHMARKS).
    random_erase: float = 0.0
    extra_min_images: int = 2  # extra sources: identities with fewer images get no CosFace class
    # With a teacher, keep those identities' images anyway as teacher-only rows (distillation term
    # only): half_res is mostly one image a person. Off: they are left out, as without a teacher.
    distill_singletons: bool = False
    # Distillation from dlib's network (trainer/teacher.py fills its cache first): "none" |
    # "relation" (pairwise cosine matrices) | "projection" (learned 512->128, cosine) | "both". Not yet
    # measured at full scale: off in the shipped configs.
    distill: str = "none"
    distill_weight: float = 0.0
    # distill="both": the projected term plus this many times the relational one (3.7 matches
    # their gradients on the shipped model; see trainer/distill.py).
    distill_relation_share: float = 3.7
    # The spread-out term (trainer/spread.py) at this weight: impostor pairs of the batch pulled
    # towards orthogonal. 0: off.
    spread_weight: float = 0.0
    # Blends of training-face pairs added to each batch, taught by dlib's network run on the same
    # blend (trainer/blend.py), at distill_weight; needs distill=projection or both. 0: off.
    mix_teacher: int = 0
    # The blends' term weighs this share of distill_weight (at 1.0 the blends crowded the real
    # faces out of the projection: session 19).
    mix_share: float = 1.0
    # Which cached teacher vectors to learn: "plain" (dlib's descriptor of the chip) or "mirror"
    # (of the chip and its mirror, averaged; `trainer teacher --views mirror` caches them).
    teacher_views: str = "plain"
    # Splits, galleries and the closed-set evaluation follow ``seed``; data order, augmentation,
    # dropout and any random initialisation follow ``order_seed`` (None: ``seed``). Another
    # order_seed is a second run of a recipe on the very same split, so the two are comparable.
    seed: int = 0
    order_seed: int | None = None
    workers_threads: int | None = None
    # The final model's BatchNorm statistics, measured again on this many clean training images and
    # their mirrors (trainer/average.py), instead of the running averages of augmented batches: on
    # the shipped model +0.002 val TAR, +0.003 closed top-1, +0.009 celeba_ir TPR at FPR 0.001
    # (docs/BENCHMARKS.md, session 12).
    # 0: keep the running averages (the tiny config, and every run before session 12).
    bn_images: int = 0
    # The first backbone block that trains (a name from facenet-pytorch's InceptionResnetV1, e.g.
    # "mixed_7a"); every block before it keeps its weights and, while training, its BatchNorm
    # statistics (bn_images still measures every layer's at the end). "" trains all.
    # A fine-tune's lever where training is slow: on 2 AVX2 cores in fp32 a trainer step runs 33
    # images/s with every block, 87 from mixed_7a (bench.training_speed; docs/BENCHMARKS.md).
    train_from: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["input_size"] = tuple(d["input_size"])
        return cls(**d)


CONFIGS: dict[str, TrainConfig] = {
    # A handful of identities, a couple of epochs: seconds. Used by the tests.
    "tiny": TrainConfig(name="tiny", epochs=2, batch_size=16, lr=0.05, warmup_epochs=0.0, scale=16.0,
                        margin=0.1, margin_warmup_epochs=0.0, precision="fp32", channels_last=False,
                        open_identities=2, val_per_identity=1, gallery_per_identity=3, limit_identities=8),
    # The whole celeba1k (20,935 training images) on 2 CPU cores, 16 epochs: 45 min on a quiet AMD
    # EPYC with native bf16 (171-178 images/s), about 100 min on an Intel Xeon with AMX (55-65
    # images/s beside other work), about 2.6 h on an AVX2-only EPYC (fp32, 35.6 images/s). README.
    "cpu": TrainConfig(name="cpu", epochs=16, batch_size=128, bn_images=4096),
    # Used automatically when CUDA is present: a larger input and more epochs, mixed precision.
    "gpu": TrainConfig(name="gpu", input_size=(128, 112), epochs=60, batch_size=256, lr=0.2,
                       precision="amp", warmup_epochs=2.0, bn_images=4096),
}


def parse_overrides(items: list[str]) -> dict:
    """``["random_erase=0.5", "epochs=8"]`` -> typed overrides of :class:`TrainConfig` fields;
    an unknown field or a value of the wrong type raises ``ValueError`` naming it."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out: dict = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or name not in fields or name == "name":
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(n for n in fields if n != 'name')}")
        kind = str(fields[name].type)
        try:
            if kind == "bool":
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                out[name] = raw.lower() in ("true", "1")
            elif kind.startswith("tuple"):
                out[name] = tuple(int(v) for v in raw.split(","))
            elif kind.startswith("int"):
                out[name] = None if raw.lower() == "none" and "None" in kind else int(raw)
            elif kind == "float":
                out[name] = float(raw)
            else:
                out[name] = raw
        except ValueError:
            raise ValueError(f"--set {item!r}: {raw!r} is not a valid {kind}") from None
    return out


def get_config(name: str, **overrides) -> TrainConfig:
    if name not in CONFIGS:
        raise KeyError(f"unknown config {name!r}; choose one of {', '.join(CONFIGS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(CONFIGS[name], **overrides)


def config_from_cli(name: str, epochs: int | None, items: list[str]) -> TrainConfig:
    """The config ``fit`` trains with: ``--epochs`` when given, then the ``--set`` overrides,
    an explicit ``FIELD=none`` included (``get_config`` reads None as "not given", which once
    left ``--set limit_identities=none`` silently at the tiny config's 8 identities)."""
    overrides = parse_overrides(items)
    config = get_config(name, epochs=epochs, **{k: v for k, v in overrides.items() if v is not None})
    return replace(config, **{k: v for k, v in overrides.items() if v is None})
