"""Would a linear map learned on the training identities help the shipped model, with no training?

The network ends in ``last_linear`` and ``last_bn``, then L2 normalisation, so a map ``W (z - mu)``
of ``last_bn``'s output ``z`` would fold into those two layers at no serving cost. This measures
the candidates before anyone builds the fold: ``z`` of every celeba1k image of the model's split
and its mirror (the serving embedder sums the two unit vectors), statistics from the training
split only, then the release report's val figures (closed top-1 against the training-image
gallery, open TAR at FAR 1e-2 / 1e-3 and AUC over the 50 held-out identities) for each map:

- centring alone (subtract the training mean);
- WCCN: whiten the within-identity scatter, ``(S_w + lambda tr(S_w)/d I)^(-1/2)``;
- whitening of the total scatter;
- LDA: WCCN, then the leading ``k`` directions of the whitened between-identity scatter;
- with ``--teacher plain|mirror``, teacher-aligned maps: ``P`` is the ridge map from the unit
  embedding to dlib's centred unit vector of the same training image (the teacher cache of
  ``trainer teacher``), and ``(I + c P^T P)^(1/2)`` scores a pair by its cosine plus ``c`` times
  the cosine of their teacher-space images. Unlike the whitenings above it weighs up the
  directions that predict the teacher, who was trained on 3M faces, not those the network's own
  training people vary least in. ``P`` alone (128 dims) is measured too.

    OMP_NUM_THREADS=2 python -m bench.linear_map --threads 2 [--teacher mirror]
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from bench import common

WCCN_LAMBDAS = (0.1, 1.0, 3.0)
TOTAL_LAMBDAS = (0.1, 1.0)
LDA = ((1.0, 128), (1.0, 256))
TEACHER_WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0)
TEACHER_RIDGE = 1e-3  # as trainer.fit.Trainer.fit_projection: times the number of rows


@torch.inference_mode()
def last_bn_outputs(artifact, crops: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """(N, 2, d): ``last_bn``'s output for each crop and its mirror, before normalisation."""
    from recognizer.embedder import build_backbone
    from recognizer.preprocess import to_tensor

    model = build_backbone()
    model.load_state_dict({k: v.float() for k, v in artifact.state_dict.items()})
    model.eval()
    captured: dict[str, torch.Tensor] = {}
    model.last_bn.register_forward_hook(lambda _m, _i, out: captured.__setitem__("z", out))
    z = np.zeros((len(crops), 2, artifact.embedding_size), np.float32)
    for start in tqdm(range(0, len(crops), batch_size), desc="last_bn outputs", unit="batch"):
        batch = to_tensor(crops[start:start + batch_size], artifact.recipe)
        model(torch.cat([batch, torch.flip(batch, dims=[3])]))
        out = captured["z"].float().numpy()
        z[start:start + len(batch), 0], z[start:start + len(batch), 1] = out[:len(batch)], out[len(batch):]
    return z


def served(z: np.ndarray, w: np.ndarray, mu: np.ndarray | float) -> np.ndarray:
    """What the serving embedder would return with the map folded in: each view mapped and
    normalised, the two summed and normalised again."""
    views = [(z[:, k].astype(np.float64) - mu) @ w.T for k in (0, 1)]
    out = sum(v / np.linalg.norm(v, axis=1, keepdims=True) for v in views)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def scatter(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, within-identity, between-identity, total) scatter matrices of the rows of ``x``."""
    mu = x.mean(0)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    means = np.zeros((len(counts), x.shape[1]))
    np.add.at(means, inverse, x)
    means /= counts[:, None]
    within = x - means[inverse]
    centred = means - mu
    return (mu, within.T @ within / len(x), centred.T @ (centred * counts[:, None]) / len(x),
            np.cov(x.T, bias=True))


def inverse_sqrt(s: np.ndarray, shrink: float) -> np.ndarray:
    """``(S + shrink * tr(S)/d * I)^(-1/2)``: whitening, shrunk towards the identity."""
    d = len(s)
    values, vectors = np.linalg.eigh(s + shrink * np.trace(s) / d * np.eye(d))
    return vectors @ np.diag(values ** -0.5) @ vectors.T


def candidate_maps(z_train: np.ndarray, train_labels: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray | float]]:
    """Every map this benchmark measures, by name: (W, mu)."""
    x = np.concatenate([z_train[:, 0], z_train[:, 1]]).astype(np.float64)
    mu, s_w, s_b, s_t = scatter(x, np.concatenate([train_labels, train_labels]))
    eye = np.eye(x.shape[1])
    maps: dict[str, tuple[np.ndarray, np.ndarray | float]] = {"none (the shipped model)": (eye, 0.0),
                                                             "centring": (eye, mu)}
    for lam in WCCN_LAMBDAS:
        maps[f"WCCN, lambda {lam:g}"] = (inverse_sqrt(s_w, lam), mu)
    for lam in TOTAL_LAMBDAS:
        maps[f"total whitening, lambda {lam:g}"] = (inverse_sqrt(s_t, lam), mu)
    for lam, k in LDA:
        w = inverse_sqrt(s_w, lam)
        _, vectors = np.linalg.eigh(w @ s_b @ w.T)
        maps[f"LDA, lambda {lam:g}, {k} dims"] = (vectors[:, ::-1][:, :k].T @ w, mu)
    return maps


def teacher_map(z_train: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """(128, d) ridge map from the unit embeddings of the training images (both views) to their
    teacher vectors (the same target for the mirror view: the mirror-averaged teacher is
    mirror-invariant, and the plain one nearly so)."""
    x = np.concatenate([z_train[:, 0], z_train[:, 1]]).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.concatenate([teacher, teacher]).astype(np.float64)
    return np.linalg.solve(x.T @ x + TEACHER_RIDGE * len(x) * np.eye(x.shape[1]), x.T @ y).T


def teacher_maps(project: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
    """``P`` alone and ``(I + c P^T P)^(1/2)`` for each weight ``c``, by name."""
    gram = project.T @ project
    maps: dict[str, tuple[np.ndarray, float]] = {"teacher space alone (P, 128 dims)": (project, 0.0)}
    for c in TEACHER_WEIGHTS:
        values, vectors = np.linalg.eigh(np.eye(len(gram)) + c * gram)
        maps[f"teacher-aligned, c {c:g}"] = (vectors @ np.diag(np.sqrt(values)) @ vectors.T, 0.0)
    return maps


def teacher_targets(celeba1k, recipe, cache: str, views: str, train: np.ndarray) -> np.ndarray:
    """dlib's cached vectors of the training rows, centred over them and unit-normalised, as
    ``trainer fit`` makes its targets; every training row must have one."""
    from trainer.data import discover
    from trainer.teacher import load

    vectors, have = load(discover(celeba1k), cache, recipe, views)
    if not have[train].all():
        raise SystemExit(f"{int((~have[train]).sum())} training images have no {views} teacher vector: run "
                         f"`python -m trainer teacher --data {celeba1k} --views {views}` first")
    out = vectors[train] - vectors[train].mean(0)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def main() -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=str(common.DEFAULT_MODEL))
    p.add_argument("--cache", default=str(common.ROOT / ".cache"))
    p.add_argument("--teacher", choices=("plain", "mirror"), default=None,
                   help="also measure the teacher-aligned maps, fitted to these cached teacher vectors")
    args = p.parse_args()
    common.set_threads(args.threads)
    start = time.perf_counter()
    from recognizer.artifact import ModelArtifact
    from trainer import metrics
    from trainer.data import closed_set_gallery, model_split

    celeba1k = common.require_data(args, "celeba1k")
    artifact = ModelArtifact.load(args.model)
    config = artifact.training["config"]
    crops, labels, splits = model_split(config, celeba1k, artifact.recipe, args.cache)
    gallery = closed_set_gallery(labels, splits.train, len(labels), int(config["seed"]) + 1)
    if args.quick:
        gallery = gallery[:2000]
    rows = np.unique(np.concatenate([splits.train if not args.quick else gallery, gallery,
                                     splits.closed_val, splits.open_set]))
    network_start = time.perf_counter()
    z = np.zeros((len(labels), 2, artifact.embedding_size), np.float32)
    z[rows] = last_bn_outputs(artifact, crops[rows])
    seconds = time.perf_counter() - network_start
    train = splits.train if not args.quick else gallery
    maps = candidate_maps(z[train], labels[train])
    if args.teacher:
        maps.update(teacher_maps(teacher_map(z[train], teacher_targets(celeba1k, artifact.recipe, args.cache,
                                                                      args.teacher, train))))
    results = []
    for name, (w, mu) in maps.items():
        pos, neg = metrics.all_pairs(served(z[splits.open_set], w, mu), labels[splits.open_set])
        report = metrics.verification_report(pos, neg)
        closed = metrics.closed_set_accuracy(served(z[gallery], w, mu), labels[gallery],
                                             served(z[splits.closed_val], w, mu), labels[splits.closed_val])
        results.append({"map": name, "top1": closed["top1"], "tar@far=0.01": report["tar@far=0.01"],
                        "tar@far=0.001": report["tar@far=0.001"], "auc": report["roc_auc"]})
    header = ["map (statistics: training split + mirrors)", "val closed top-1", "val TAR @ FAR 1e-2",
              "val TAR @ FAR 1e-3", "val AUC"]
    table = common.markdown_table(header, [[r["map"], f"{r['top1']:.3f}", f"{r['tar@far=0.01']:.3f}",
                                            f"{r['tar@far=0.001']:.3f}", f"{r['auc']:.4f}"] for r in results])
    text = f"{table}\n\n{len(rows)} images and their mirrors through the network in {seconds:.0f} s; model {artifact.version}"
    return common.finish("linear_map", args, {"model": artifact.version, "images": int(len(rows)),
                                              "network_seconds": seconds, "results": results}, text, start)

if __name__ == "__main__":
    raise SystemExit(main())
