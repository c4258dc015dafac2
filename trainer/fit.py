"""``python -m trainer fit``: train InceptionResnetV1 with the CosFace head, epoch by epoch.

Each epoch writes ``metrics.jsonl`` (one line), ``curves.png``, a resumable ``checkpoint.pt``
and the serving artifact ``model.pt``, so an interrupted run still leaves a usable model.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from recognizer.artifact import ModelArtifact
from recognizer.atomic import atomic_write
from recognizer.embedder import Embedder, build_backbone, embed_tensor
from recognizer.preprocess import AlignmentRecipe, to_tensor

from . import metrics
from .configs import TrainConfig
from .cosface import CosFaceHead
from .data import Splits, add_extra_sources, closed_set_gallery, discover, load_crops, make_splits, sample_rows
from .distill import ProjectedDistillation, build_distiller
from .spread import SpreadOut
from .precision import autocast, cpu_name, resolve_precision

THRESHOLD_FAR = 1e-3


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Face-safe augmentation on a normalised NCHW batch: horizontal flip, small scale and
    shift jitter (one affine warp for the whole batch), brightness and contrast jitter."""
    n = batch.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=generator).to(batch.device)  # noqa: E731
    flip = rand(n) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
    scale = 1.0 + (rand(n) - 0.5) * 0.2  # 0.9 .. 1.1
    shift = (rand(n, 2) - 0.5) * 0.1  # +-5% of the image
    theta = torch.zeros(n, 2, 3, device=batch.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    batch = F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    contrast = 1.0 + (rand(n, 1, 1, 1) - 0.5) * 0.4
    brightness = (rand(n, 1, 1, 1) - 0.5) * 0.4
    return batch * contrast + brightness


def random_erase(batch: torch.Tensor, generator: torch.Generator, p: float,
                 area: tuple[float, float] = (0.02, 0.2), aspect: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Random erasing (Zhong et al., 2017): with probability ``p`` a sample gets one rectangle
    of ``area`` (share of the image) and ``aspect`` filled with noise, a stand-in for the
    hands, scarves and glasses of real photos; it also keeps a small training set from being
    memorised by its easiest pixels."""
    n, _, h, w = batch.shape
    rand = lambda *shape: torch.rand(*shape, generator=generator).to(batch.device)  # noqa: E731
    target = (area[0] + rand(n) * (area[1] - area[0])) * h * w
    ratio = torch.exp(math.log(aspect[0]) + rand(n) * math.log(aspect[1] / aspect[0]))
    eh = torch.sqrt(target * ratio).clamp(1, h)
    ew = torch.sqrt(target / ratio).clamp(1, w)
    y0 = rand(n) * (h - eh)
    x0 = rand(n) * (w - ew)
    ys = torch.arange(h, device=batch.device)[None, :, None]
    xs = torch.arange(w, device=batch.device)[None, None, :]
    inside = ((ys >= y0[:, None, None]) & (ys < (y0 + eh)[:, None, None])
              & (xs >= x0[:, None, None]) & (xs < (x0 + ew)[:, None, None]))
    inside &= (rand(n) < p)[:, None, None]
    noise = torch.randn(batch.shape, generator=generator).to(batch.device, batch.dtype)
    return torch.where(inside[:, None], noise, batch)


@torch.inference_mode()
def embed_crops(model: torch.nn.Module, crops: np.ndarray, recipe: AlignmentRecipe, config: TrainConfig,
                device: torch.device, precision: str, batch_size: int = 256) -> np.ndarray:
    """Flip-averaged embeddings of cached crops, in the training precision (for per-epoch eval)."""
    model.eval()
    out = []
    for start in range(0, len(crops), batch_size):
        batch = to_tensor(crops[start:start + batch_size], recipe).to(device)
        if config.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            out.append(embed_tensor(model, batch, flip_average=True).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 512), np.float32)


def freeze_before(model: torch.nn.Module, first_trained: str) -> list[torch.nn.Module]:
    """Freeze every top-level block of ``model`` before the one named ``first_trained`` (no
    gradients, so backpropagation stops at that block) and return them, for the caller to keep in
    eval mode: their BatchNorm statistics stay those of the model they came from. "" freezes
    nothing. An unknown name raises ``ValueError`` listing the blocks."""
    if not first_trained:
        return []
    blocks = dict(model.named_children())
    if first_trained not in blocks:
        raise ValueError(f"train_from={first_trained!r}: not a block of the backbone; one of {', '.join(blocks)}")
    frozen = list(blocks.values())[:list(blocks).index(first_trained)]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def rng_state() -> dict:
    """Every global RNG a step draws from (dropout uses torch's), for an exact resume; the
    data order and augmentation come from a generator seeded per epoch."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))


def warn_if_slowed(history: list[dict], ratio: float = 0.5) -> None:
    """Say so when an epoch ran far slower than the first: on 2 cores another busy process
    (or thread barriers spinning against it) slowed steps 30-60x in one measured case."""
    first, last = history[0].get("images_per_second"), history[-1].get("images_per_second")
    if first and last and last < ratio * first:
        print(f"WARNING: epoch {history[-1]['epoch']} trained at {last:.0f} images/s, under {ratio:.0%} of "
              f"the first epoch's {first:.0f}: is another process busy on these cores?", flush=True)


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero at the last step."""
    warm = config.warmup_epochs * steps_per_epoch
    total = config.epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1.0, total - warm)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    taught = any("distill_loss" in h for h in history)
    ax1.plot(epochs, [h["loss"] for h in history], "o-",
             label="total loss (CosFace + weight x distillation)" if taught else "CosFace loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.grid(alpha=0.3)
    handles, labels = ax1.get_legend_handles_labels()
    if taught:  # its own axis: unweighted it is ~100x smaller than the total
        twin = ax1.twinx()
        twin.plot(epochs, [h.get("distill_loss", float("nan")) for h in history], "s--", color="tab:orange",
                  label="distillation term toward dlib (unweighted, right axis)")
        twin.set_ylabel("distillation term")
        more, names = twin.get_legend_handles_labels()
        handles, labels = handles + more, labels + names
    ax1.legend(handles, labels, fontsize=8)
    for key, label in [("train_accuracy", "train accuracy"), ("closed_top1", "closed-set top-1 (held-out images)"),
                       ("open_tar@far=0.01", "open-set TAR @ FAR 1e-2"), ("open_tar@far=0.001", "open-set TAR @ FAR 1e-3")]:
        ax2.plot(epochs, [h.get(key, float("nan")) for h in history], "o-", label=label)
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.grid(alpha=0.3)
    ax2.legend(loc="lower right", fontsize=8)
    fig.suptitle("training curves")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


class Trainer:
    """Owns the data, model, head and optimiser of one run directory."""

    def __init__(self, data_dir: str | os.PathLike, config: TrainConfig, out_dir: str | os.PathLike,
                 resume: bool = False, cache_dir: str | os.PathLike | None = ".cache",
                 device: str | None = None, threads: int | None = None,
                 extra_dirs: Sequence[str | os.PathLike] = (), teacher_cache: str | os.PathLike = ".cache",
                 init: str | os.PathLike | None = None) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed batch shapes: pick the fastest kernels once
        if threads:
            torch.set_num_threads(threads)
        checkpoint = None
        ckpt_path = self.out / "checkpoint.pt"
        if resume:
            if not ckpt_path.is_file():
                raise FileNotFoundError(f"--resume given but {ckpt_path} does not exist")
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            saved = TrainConfig.from_dict(checkpoint["config"])
            config = TrainConfig.from_dict({**saved.to_dict(), "epochs": config.epochs})
        self.config = config
        self.precision, self.precision_reason = resolve_precision(config.precision, self.device)
        self.recipe = AlignmentRecipe(input_size=config.input_size)
        self.data_dir = Path(data_dir)
        self.extra_dirs = [Path(d) for d in extra_dirs]
        dataset = discover(data_dir, config.limit_identities)
        crops, ok = load_crops(dataset, self.recipe, cache_dir)
        self.crops = crops[ok]
        labels = dataset.labels[ok]
        self.skipped = int((~ok).sum())
        self.splits = (Splits.from_dict(checkpoint["splits"]) if checkpoint else
                       make_splits(labels, config.open_identities, config.val_per_identity, config.seed))
        self.main_splits = self.splits  # what a resume rebuilds from; extra sources are appended anew
        if config.distill_singletons and config.distill == "none":
            raise ValueError("distill_singletons needs a distillation term (--set distill=...)")
        self.crops, labels, self.splits, self.extra_summary, extra_paths, teacher_only = add_extra_sources(
            self.crops, labels, self.splits, self.extra_dirs, self.recipe, cache_dir, config.extra_min_images,
            keep_below_min=config.distill_singletons)
        self.paths = [p for p, k in zip(dataset.paths, ok) if k] + extra_paths
        self.labels = labels
        # Teacher-only rows (distill_singletons) have no CosFace class: target -1.
        train_classes = np.unique(labels[self.splits.train][~teacher_only[self.splits.train]])
        self.class_index = {int(c): i for i, c in enumerate(train_classes)}
        self.train_targets = np.array([-1 if t else self.class_index[int(c)] for c, t in
                                       zip(labels[self.splits.train], teacher_only[self.splits.train])], dtype=np.int64)
        self.run_seed = config.seed if config.order_seed is None else config.order_seed
        torch.manual_seed(self.run_seed)
        self.model = build_backbone(config.dropout).to(self.device)
        self.head = CosFaceHead(512, len(train_classes), config.scale, config.margin).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.frozen = freeze_before(self.model, config.train_from)
        self.distiller = build_distiller(config.distill, config.distill_relation_share)
        self.teacher = self.teacher_have = None
        if self.distiller is not None:
            from .teacher import targets_for

            self.distiller = self.distiller.to(self.device)
            self.teacher, self.teacher_have, self.teacher_centre = targets_for(
                self.paths, [self.data_dir, *self.extra_dirs], teacher_cache, self.recipe, config.teacher_views)
            print(f"teacher: {int(self.teacher_have[self.splits.train].sum())} of {len(self.splits.train)} "
                  f"training images have a dlib vector ({config.distill}, weight {config.distill_weight}, "
                  f"{config.teacher_views} views)", flush=True)
        self.blends = None
        if config.mix_teacher > 0:
            if not isinstance(self.distiller, ProjectedDistillation):
                raise ValueError("mix_teacher needs a projected teacher term (--set distill=projection or both)")
            from . import dlib_net
            from .blend import TeacherBlends
            from .teacher import chips_for

            train_paths = [self.paths[i] for i in self.splits.train]
            self.blends = TeacherBlends(self.crops[self.splits.train], chips_for(train_paths, teacher_cache, self.recipe),
                                        self.teacher_centre, self.recipe, dlib_net.load().to(self.device),
                                        config.teacher_views)
            print(f"teacher blends: {config.mix_teacher} a step, dlib run on each blend", flush=True)
        extra_params = list(self.distiller.parameters()) if self.distiller is not None else []
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            trained + list(self.head.parameters()) + extra_params, lr=config.lr,
            momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True)
        self.steps_per_epoch = max(1, len(self.splits.train) // config.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.steps_per_epoch, self.config))
        self.start_epoch = 1
        self.history: list[dict] = []
        self.budget: dict = dict(checkpoint.get("budget") or {}) if checkpoint else {}
        self.init = dict(checkpoint.get("init") or {}) if checkpoint else {}
        if init is not None and not checkpoint:
            self.init = self.warm_start(Path(init))
        elif self.frozen and not checkpoint:
            print(f"WARNING: train_from={config.train_from} without --init: the frozen blocks keep their random "
                  "weights (fine for timing a step, useless for a model)", flush=True)
        if checkpoint:
            self.model.load_state_dict(checkpoint["backbone"])
            self.head.load_state_dict(checkpoint["head"])
            if self.distiller is not None and checkpoint.get("distiller"):
                self.distiller.load_state_dict(checkpoint["distiller"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            self.start_epoch = int(checkpoint["epoch"]) + 1
            self.history = list(checkpoint.get("history", []))
            if "rng" in checkpoint:
                set_rng_state(checkpoint["rng"])
        # closed-set evaluation stays on the main source, as in every earlier run
        self.gallery_idx = closed_set_gallery(labels, self.main_splits.train, config.gallery_per_identity,
                                              config.seed + 1)
        (self.out / "splits.json").write_text(json.dumps({
            "data": str(self.data_dir), "layout": dataset.layout, "images": len(dataset.paths),
            "extra_sources": self.extra_summary,
            "skipped_no_face": self.skipped, "identities": int(len(np.unique(labels))),
            "train_identities": int(len(train_classes)),
            **{k: len(v) for k, v in self.main_splits.to_dict().items()},
            "open_set_labels": sorted({int(x) for x in labels[self.splits.open_set]}),
        }, indent=1))

    def warm_start(self, path: Path) -> dict:
        """Start from a trained model's backbone instead of from scratch (a fine-tune): a session
        too short for a whole run still builds on the last one. The CosFace head is not in a
        model file, so each class centre starts as the mean embedding of a few of its training
        images (weight imprinting), which keeps the first steps from tearing the backbone apart
        with a random head's gradients."""
        source = ModelArtifact.load(path)
        if tuple(source.recipe.input_size) != tuple(self.config.input_size):
            raise ValueError(f"--init {path}: its input is {tuple(source.recipe.input_size)}, this config trains "
                             f"at {tuple(self.config.input_size)}")
        split_keys = ("seed", "open_identities", "val_per_identity", "limit_identities")
        theirs = source.training.get("config", {})
        changed = [k for k in split_keys if k in theirs and theirs[k] != getattr(self.config, k)]
        if changed:
            print(f"WARNING: --init {path} was trained with other {', '.join(changed)}: it has seen images this "
                  "run holds out, so its validation figures will read too high", flush=True)
        self.model.load_state_dict({k: v.float() for k, v in source.state_dict.items()})
        rows = closed_set_gallery(self.labels, self.splits.train[self.train_targets >= 0], 4, self.config.seed)
        classes = np.array([self.class_index[int(c)] for c in self.labels[rows]], dtype=np.int64)
        emb = embed_crops(self.model, self.crops[rows], self.recipe, self.config, self.device, self.precision)
        centres = np.zeros((len(self.class_index), emb.shape[1]), np.float32)
        np.add.at(centres, classes, emb)
        with torch.no_grad():
            self.head.weight.copy_(F.normalize(torch.from_numpy(centres), dim=1).to(self.device))
        print(f"warm start from {path} (version {source.version}); head imprinted from {len(rows)} images",
              flush=True)
        if isinstance(self.distiller, ProjectedDistillation):
            self.fit_projection(rows, emb)
        ancestry = source.training.get("init")  # what the source was itself fine-tuned from, if anything
        return {"path": str(path), "version": source.version, "epochs_done": source.training.get("epochs_done"),
                "wall_seconds": source.training.get("wall_seconds"), **({"init": ancestry} if ancestry else {})}

    def fit_projection(self, rows: np.ndarray, emb: np.ndarray) -> None:
        """Start the 512->128 projection at the least-squares map from the warm backbone's
        embeddings to the teacher's vectors (ridge, on the imprint rows that have one). A random
        projection starts the term near 1 - 0 = 1, and its gradient, times a large weight, hits
        a trained backbone before the projection has learnt anything: the same reason the head
        is imprinted."""
        have = self.teacher_have[rows]
        if have.sum() < 2:
            return
        x, y = emb[have].astype(np.float64), self.teacher[rows][have].astype(np.float64)
        ridge = 1e-3 * len(x) * np.eye(x.shape[1])
        weight = np.linalg.solve(x.T @ x + ridge, x.T @ y).T  # (128, 512), as nn.Linear stores it
        student = torch.from_numpy(emb).float().to(self.device)
        teacher = torch.from_numpy(self.teacher[rows]).float().to(self.device)
        mask = torch.from_numpy(have).to(self.device)
        with torch.no_grad():
            before = self.distiller(student, teacher, mask).item()
            self.distiller.project.weight.copy_(torch.from_numpy(weight).float().to(self.device))
            after = self.distiller(student, teacher, mask).item()
        print(f"projection fitted to the teacher on {int(have.sum())} images: 1 - cosine {before:.3f} -> {after:.3f}",
              flush=True)

    def train_mode(self) -> None:
        """Backbone and head in training mode, but the frozen blocks (``train_from``) in eval mode, so
        that their BatchNorm statistics stay the started-from model's."""
        self.model.train()
        for module in self.frozen:
            module.eval()
        self.head.train()

    def train_epoch(self, epoch: int) -> dict:
        config, device = self.config, self.device
        self.train_mode()
        generator = torch.Generator().manual_seed(self.run_seed * 1000 + epoch)
        order = torch.randperm(len(self.splits.train), generator=generator).numpy()
        total_loss, total_margin, total_distill, total_spread, total_blend = 0.0, 0.0, 0.0, 0.0, 0.0
        correct, seen, classed = 0, 0, 0
        spread_out = SpreadOut() if config.spread_weight > 0 else None
        start = time.time()
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", unit="step",
                   mininterval=10)
        for step in bar:
            sel = order[step * config.batch_size:(step + 1) * config.batch_size]
            global_step = (epoch - 1) * self.steps_per_epoch + step
            if config.margin_warmup_epochs > 0:
                ramp = min(1.0, global_step / (config.margin_warmup_epochs * self.steps_per_epoch))
                self.head.margin = config.margin * ramp
            batch = to_tensor(self.crops[self.splits.train[sel]], self.recipe).to(device)
            targets = torch.from_numpy(self.train_targets[sel]).to(device)
            if config.augment:
                batch = augment(batch, generator)
            if config.random_erase > 0:
                batch = random_erase(batch, generator, config.random_erase)
            blend_targets = None
            if self.blends is not None:
                first = sel[:config.mix_teacher]
                second = torch.randint(len(self.splits.train), (len(first),), generator=generator).numpy()
                blended, blend_targets = self.blends.make(first, second, generator, device)
                batch = torch.cat([batch, blended])
            if config.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast(self.precision, device):
                embeddings = self.model(batch)
            if blend_targets is not None:
                embeddings, blend_embeddings = embeddings[:len(sel)], embeddings[len(sel):]
            if spread_out is not None:  # before the teacher-only rows (-1) are dropped: they are people too
                spread = spread_out(embeddings, targets)
                total_spread += spread.item() * len(sel)
            has_class = targets >= 0  # teacher-only rows (-1) get the distillation term alone
            targets = targets[has_class]
            loss, cosines = (self.head(embeddings.float()[has_class], targets) if len(targets)
                             else (embeddings.sum() * 0.0, embeddings.new_zeros((0, 1))))
            total_margin += loss.item() * len(sel)
            if self.distiller is not None:
                rows = self.splits.train[sel]
                distill = self.distiller(embeddings.float(), torch.from_numpy(self.teacher[rows]).to(device),
                                         torch.from_numpy(self.teacher_have[rows]).to(device))
                total_distill += distill.item() * len(sel)
                loss = loss + config.distill_weight * distill
            if blend_targets is not None:
                blend_term = self.distiller(blend_embeddings.float(), blend_targets,
                                            torch.ones(len(blend_targets), dtype=torch.bool, device=device))
                total_blend += blend_term.item() * len(sel)
                loss = loss + config.distill_weight * config.mix_share * blend_term
            if spread_out is not None:
                loss = loss + config.spread_weight * spread
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            total_loss += loss.item() * len(sel)
            correct += int((cosines.argmax(1) == targets).sum())
            classed += len(targets)
            seen += len(sel)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / max(classed, 1):.3f}",
                            lr=f"{self.scheduler.get_last_lr()[0]:.4f}", refresh=False)
        elapsed = time.time() - start
        # Each term is averaged over the same images as "loss", so loss = margin_loss + the weighted terms.
        return {"loss": total_loss / max(seen, 1), "margin_loss": total_margin / max(seen, 1),
                "train_accuracy": correct / max(classed, 1),
                **({"distill_loss": total_distill / max(seen, 1)} if self.distiller is not None else {}),
                **({"spread_loss": total_spread / max(seen, 1)} if spread_out is not None else {}),
                **({"blend_distill_loss": total_blend / max(seen, 1)} if self.blends is not None else {}),
                "train_seconds": elapsed, "images_per_second": seen / max(elapsed, 1e-9),
                "lr": self.scheduler.get_last_lr()[0], "margin": self.head.margin}

    def evaluate(self) -> dict:
        """Closed-set top-1/top-5 with mean vectors, open-set verification on held-out people."""
        start = time.time()
        result: dict = {}
        sp = self.splits
        if len(sp.closed_val):
            gal = embed_crops(self.model, self.crops[self.gallery_idx], self.recipe, self.config, self.device,
                              self.precision)
            qry = embed_crops(self.model, self.crops[sp.closed_val], self.recipe, self.config, self.device,
                              self.precision)
            acc = metrics.closed_set_accuracy(gal, self.labels[self.gallery_idx], qry, self.labels[sp.closed_val])
            result.update({f"closed_{k}": v for k, v in acc.items()})
        if len(sp.open_set) > 1:
            emb = embed_crops(self.model, self.crops[sp.open_set], self.recipe, self.config, self.device,
                              self.precision)
            pos, neg = metrics.all_pairs(emb, self.labels[sp.open_set])
            if len(pos) and len(neg):
                rep = metrics.verification_report(pos, neg)
                result.update({f"open_{k}": v for k, v in rep.items()})
        result["eval_seconds"] = time.time() - start
        return result

    def calibrate(self, artifact: ModelArtifact) -> dict:
        """Threshold at FAR 1e-3 on the held-out identities, with the serving embedder itself."""
        sp = self.splits
        if len(sp.open_set) < 2:
            return {"threshold": 0.5, "threshold_source": "default (no held-out identities)"}
        emb = Embedder(artifact, device=str(self.device)).embed(self.crops[sp.open_set])
        pos, neg = metrics.all_pairs(emb, self.labels[sp.open_set])
        if not len(pos) or not len(neg):
            return {"threshold": 0.5, "threshold_source": "default (too few held-out pairs)"}
        thr = metrics.threshold_at_far(neg, THRESHOLD_FAR)
        tar = float(np.mean(pos > thr))
        return {"threshold": thr, "threshold_source": f"FAR {THRESHOLD_FAR:g} on {len(neg)} held-out "
                f"negative pairs ({len(np.unique(self.labels[sp.open_set]))} identities), TAR {tar:.3f}"}

    def reestimate_batchnorm(self, artifact: ModelArtifact) -> None:
        """The final model's BatchNorm statistics measured on ``bn_images`` clean training images
        of the main source and their mirrors, as the serving embedder sees faces (the running
        averages came from augmented batches). Only the artifact changes: the checkpoint keeps
        the training state, so a resumed run continues exactly."""
        from .average import reestimate_batchnorm

        reestimate_batchnorm(artifact, self.crops[sample_rows(self.main_splits.train, self.config.bn_images,
                                                              self.config.seed)])

    def _artifact(self, summary: dict) -> ModelArtifact:
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        return ModelArtifact(state_dict=state, recipe=self.recipe, threshold=0.5, flip_average=True,
                             training=summary)

    def save_checkpoint(self, epoch: int) -> None:
        checkpoint = {
            "epoch": epoch, "backbone": self.model.state_dict(), "head": self.head.state_dict(),
            "distiller": self.distiller.state_dict() if self.distiller is not None else {},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "config": self.config.to_dict(), "splits": self.main_splits.to_dict(), "history": self.history,
            "extra_sources": [str(d) for d in self.extra_dirs], "rng": rng_state(), "init": self.init,
            "budget": self.budget,
        }
        atomic_write(self.out / "checkpoint.pt", lambda tmp: torch.save(checkpoint, tmp))

    def write_artifact(self, calibrate: bool) -> ModelArtifact:
        last = self.history[-1] if self.history else {}
        summary = {"config": self.config.to_dict(), "data": str(self.data_dir), "epochs_done": len(self.history),
                   "extra_sources": self.extra_summary,
                   "machine": {"cpu": cpu_name(), "precision": self.precision, "why": self.precision_reason,
                               "threads": torch.get_num_threads(),
                               **({"gpu": torch.cuda.get_device_name(self.device)}
                                  if self.device.type == "cuda" else {})},
                   "train_images": int(len(self.splits.train)),
                   "train_identities": int(len(self.class_index)),
                   "wall_seconds": float(sum(h.get("train_seconds", 0) + h.get("eval_seconds", 0) for h in self.history)),
                   "last_epoch": last, **({"init": self.init} if self.init else {}),
                   **({"budget": self.budget} if self.budget else {})}
        artifact = self._artifact(summary)
        if calibrate and self.config.bn_images > 0:
            self.reestimate_batchnorm(artifact)
        if calibrate:
            cal = self.calibrate(artifact)
        else:
            thr = last.get(f"open_threshold@far={THRESHOLD_FAR:g}")
            cal = {"threshold": thr if thr is not None else 0.5,
                   "threshold_source": "per-epoch evaluation (training precision)"}
        artifact.threshold = float(cal["threshold"])
        artifact.training["threshold_source"] = cal["threshold_source"]
        artifact.save(self.out / "model.pt")
        return artifact

    def fit_budget(self, epoch: int, elapsed: float, budget_seconds: float, per_epoch: float | None = None) -> None:
        """Set the run to the epochs that fit in ``budget_seconds`` (never more than were asked),
        so the cosine schedule still reaches zero inside a borrowed machine's time instead of
        being cut off mid-way. ``per_epoch`` defaults to the mean of the epochs so far; the
        schedule reads ``self.config``, so later steps follow the new length."""
        per_epoch = per_epoch or elapsed / (epoch - self.start_epoch + 1)
        asked = int(self.budget.get("epochs_asked", self.config.epochs))
        fit = min(asked, epoch + int(max(0.0, budget_seconds - elapsed) // per_epoch))
        self.budget = {"seconds": budget_seconds, "epochs_asked": asked, "seconds_per_epoch": round(per_epoch, 1)}
        if fit != self.config.epochs:
            self.config = replace(self.config, epochs=fit)
            print(f"budget {budget_seconds:.0f} s at {per_epoch:.1f} s an epoch: {fit} epochs of the {asked} asked",
                  flush=True)

    def fit(self, until: int | None = None, budget_seconds: float | None = None) -> ModelArtifact | None:
        """Train to the config's last epoch, or stop after epoch ``until`` (a time-boxed session;
        ``resume=True`` later continues exactly where it stopped). ``budget_seconds`` instead fixes
        the epoch count after the first epoch, from its speed (:meth:`fit_budget`). Returns the
        final artifact, or None when stopped early (each epoch's ``model.pt`` is still written)."""
        config = self.config
        last_epoch = min(config.epochs, until) if until else config.epochs
        started = time.time()
        print(f"training {config.name}: {len(self.splits.train)} images of {len(self.class_index)} identities, "
              f"{len(self.splits.closed_val)} closed-set and {len(self.splits.open_set)} open-set images, "
              f"input {config.input_size}, device {self.device}, "
              f"precision {self.precision} ({self.precision_reason}), "
              f"epochs {self.start_epoch}..{config.epochs}"
              + (f", blocks before {config.train_from} frozen" if config.train_from else ""), flush=True)
        artifact = None
        epoch = self.start_epoch
        while epoch <= last_epoch:
            epoch_started = time.time()
            row = {"epoch": epoch, **self.train_epoch(epoch), **self.evaluate()}
            self.history.append(row)
            warn_if_slowed(self.history)
            with open(self.out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            self.save_checkpoint(epoch)
            plot_curves(self.history, self.out / "curves.png")
            artifact = self.write_artifact(calibrate=epoch == config.epochs)
            # Timed with their saves (they recur). The first epoch also carries the start-up (on a
            # GPU, 17 s of kernel choice in a 45 s epoch whose successors took 25 s), so it sets a
            # safe count, and the second alone, the steady pace, gives back what that cost.
            if budget_seconds and epoch - self.start_epoch in (0, 1):
                steady = time.time() - epoch_started if epoch > self.start_epoch else None
                self.fit_budget(epoch, time.time() - started, budget_seconds, per_epoch=steady)
                if self.config.epochs != config.epochs:
                    config = self.config
                    last_epoch = min(config.epochs, until) if until else config.epochs
                    self.save_checkpoint(epoch)
                    if epoch == config.epochs:
                        artifact = self.write_artifact(calibrate=True)
            epoch += 1
        if last_epoch < config.epochs:
            print(f"stopped after epoch {last_epoch} of {config.epochs}; continue with --resume", flush=True)
            return None
        if artifact is None:  # resumed a finished run: just rewrite the artifact
            artifact = self.write_artifact(calibrate=True)
        print(f"model {artifact.version} written to {self.out / 'model.pt'} "
              f"(threshold {artifact.threshold:.4f}: {artifact.training['threshold_source']})", flush=True)
        return artifact
