"""``python -m trainer average``: a new model as a weighted sum of trained models' weights.

Where two fine-tunes of one model lie in one basin, a point between them (weights 0.5/0.5, a
"soup") or past the later one along the line between them (1.5/-0.5: extrapolation, as if the
later fine-tune had gone further the same way) is itself a model, made without a training step;
whether they do is measured, not assumed (docs/BENCHMARKS.md). The weights must sum to 1, so a
combination of one model with itself is that model, and one model alone (weight 1) with
``--bn-images`` is that model with its statistics measured again. BatchNorm running statistics are either
combined the same way (a variance pushed to zero or below by extrapolation is raised to a floor,
and how many were is printed) or measured again on training images (``--bn-images``,
:func:`reestimate_batchnorm`): a combined network's activations need not have the statistics either
parent's BatchNorm layers expect.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from recognizer.artifact import ModelArtifact
from recognizer.embedder import build_backbone
from recognizer.preprocess import to_tensor

from .data import model_split, sample_rows

VAR_FLOOR = 1e-5
WEIGHT_SUM_TOLERANCE = 1e-6


def combine_state(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> tuple[dict, int]:
    """``sum(w * state)`` for every floating-point tensor (in fp32); integer tensors (BatchNorm's
    batch counter) come from the first state. Returns the state and how many variance entries were
    raised to :data:`VAR_FLOOR`."""
    if len(states) != len(weights) or not states:
        raise ValueError(f"need one weight per model (got {len(states)} models, {len(weights)} weights)")
    if abs(sum(weights) - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise ValueError(f"weights must sum to 1 (got {sum(weights):g}): otherwise every layer is rescaled")
    keys = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        if set(state) != set(keys):
            raise ValueError(f"model {i} has other layers than model 0: not the same architecture")
    out: dict[str, torch.Tensor] = {}
    floored = 0
    for key in keys:
        first = states[0][key]
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        for i, state in enumerate(states):
            if state[key].shape != first.shape:
                raise ValueError(f"{key}: model {i} has shape {tuple(state[key].shape)}, model 0 {tuple(first.shape)}")
        value = sum(w * state[key].float() for w, state in zip(weights, states))
        if key.endswith("running_var"):
            floored += int((value < VAR_FLOOR).sum())
            value = value.clamp_min(VAR_FLOOR)
        out[key] = value.contiguous()
    return out, floored


def average_models(paths: Sequence[Path], weights: Sequence[float]) -> ModelArtifact:
    """The combined model (fp32), with the first model's recipe and training config (so the
    release report rebuilds the same split) and its sources recorded. Its threshold is the first
    model's until :func:`calibrate` sets it."""
    sources = [ModelArtifact.load(p) for p in paths]
    base = sources[0]
    for path, src in zip(paths[1:], sources[1:]):
        if src.recipe.to_dict() != base.recipe.to_dict() or src.embedding_size != base.embedding_size:
            raise ValueError(f"{path}: another input size or embedding size than {paths[0]}")
    state, floored = combine_state([s.state_dict for s in sources], weights)
    if floored:
        print(f"{floored} BatchNorm variance entries fell below {VAR_FLOOR:g} and were raised to it", flush=True)
    inherited = ("last_epoch", "budget", "batchnorm", "averaged_from", "variance_entries_floored",
                 "threshold_source", "released_from", "weights_dtype")  # facts about the first file, not this one
    training = {**{k: v for k, v in base.training.items() if k not in inherited},
                "averaged_from": [{"version": s.version, "path": str(p), "weight": float(w)}
                                  for s, p, w in zip(sources, paths, weights)],
                "variance_entries_floored": floored}
    return ModelArtifact(state_dict=state, recipe=base.recipe, threshold=base.threshold,
                         embedding_size=base.embedding_size, architecture=base.architecture,
                         flip_average=base.flip_average, training=training)


def training_crops(artifact: ModelArtifact, celeba1k: Path, cache_dir: str | None, count: int,
                   seed: int = 0) -> np.ndarray:
    """``count`` crops drawn from the training split of the model's own celeba1k split (never a
    held-out image: the figures a choice is made on stay unseen)."""
    config = artifact.training.get("config")
    if not config:
        raise ValueError("the first model carries no training config: its training split is unknown")
    crops, _, splits = model_split(config, celeba1k, artifact.recipe, cache_dir)
    return crops[sample_rows(splits.train, count, seed)]


@torch.no_grad()
def reestimate_batchnorm(artifact: ModelArtifact, crops: np.ndarray, batch_size: int = 64) -> None:
    """Replace every BatchNorm layer's running mean and variance with their average over
    ``crops`` and their mirrors (what a flip-averaging embedder feeds the network), measured in
    training mode with dropout off. Updates ``artifact.state_dict`` in place."""
    model = build_backbone()
    model.load_state_dict(artifact.state_dict)
    model.train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over every batch, not an exponential one
    with torch.no_grad():  # training mode updates the statistics; no graph is needed for that
        for start in tqdm(range(0, len(crops), batch_size), desc="BatchNorm statistics", unit="batch"):
            batch = to_tensor(crops[start:start + batch_size], artifact.recipe)
            model(torch.cat([batch, torch.flip(batch, dims=[3])]))
    fresh = model.state_dict()
    for name in artifact.state_dict:
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            artifact.state_dict[name] = fresh[name].detach().clone()
    artifact.training["batchnorm"] = f"re-estimated on {len(crops)} training images and their mirrors"


def calibrate(artifact: ModelArtifact, celeba1k: Path, cache_dir: str | None, out: Path,
              backend: str = "torch") -> dict:
    """Set the threshold at FAR 1e-3 on the run's held-out identities with the serving embedder
    (as ``trainer fit`` does), save to ``out``, and return the split report it was measured with:
    closed-set top-1 and open-set TAR, the figures a choice between candidates is made on."""
    from recognizer import Recognizer

    from .fit import THRESHOLD_FAR
    from .release import split_report

    report = split_report(Recognizer(artifact, backend=backend), celeba1k, cache_dir)
    if "skipped" in report:
        raise SystemExit(f"cannot calibrate: {report['skipped']}")
    open_set = report["open_set"]
    artifact.threshold = float(open_set[f"threshold@far={THRESHOLD_FAR:g}"])
    artifact.training["threshold_source"] = (f"FAR {THRESHOLD_FAR:g} on {open_set['negatives']} held-out negative "
                                             f"pairs ({report['open_identities']} identities), TAR "
                                             f"{open_set[f'tar@far={THRESHOLD_FAR:g}']:.3f} (trainer average)")
    artifact.save(out)
    return report
