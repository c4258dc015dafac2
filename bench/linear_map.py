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
- LDA: WCCN, then the leading ``k`` directions of the whitened between-identity scatter.

    OMP_NUM_THREADS=2 python -m bench.linear_map --threads 2
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


def main() -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=str(common.DEFAULT_MODEL))
    p.add_argument("--cache", default=str(common.ROOT / ".cache"))
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
    results = []
    for name, (w, mu) in candidate_maps(z[train], labels[train]).items():
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
