"""Embedding: eager PyTorch fp32 (today) against ONNX Runtime fp32 and PyTorch bf16 autocast.

In one process, on real aligned faces (CelebA frames cropped by the model's recipe), each way
is timed for one face (what identify embeds for a one-face photo) and per face in a batch of 32,
the ways taking turns within every round so that all see the same machine load. Each way's
embeddings are compared with today's by cosine (accepted at >= 0.995), and with ``--ir`` the
celeba_ir open-set protocol's TPR at FPR 0.01 is computed for each (accepted if it moves by
less than 0.005). bf16 runs only where the CPU has native bf16 (AMX or AVX512-BF16). With
``--int8``, the service's ``INFERENCE_BACKEND=onnx-int8`` (ONNX Runtime's static int8 graph, made
from the parameters kept beside the model by ``trainer calibrate-int8``: recognizer/int8.py) joins
the comparison under the same acceptance bars. Its ranges were measured on training-split crops;
the timed frames are spread over all of celeba1k.

    OMP_NUM_THREADS=1 python -m bench.embed_speed --model /tmp/model.pt --threads 1 --ir
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from trainer.precision import native_bf16

from . import common


def tpr_at_fpr(emb: dict[str, np.ndarray], labels: np.ndarray, fpr: float = 0.01) -> float:
    """celeba_ir protocol: positives = two query images of one id, negatives = query vs distractor."""
    q, d = emb["query"], emb["distractors"]
    sims = q @ q.T
    i, j = np.triu_indices(len(q), k=1)
    pos = sims[i, j][labels[i] == labels[j]]
    neg = (q @ d.T).ravel()
    thr = np.quantile(neg, 1 - fpr)
    return float(np.mean(pos > thr))


def run(args: argparse.Namespace) -> dict:
    import csv

    from recognizer import Recognizer
    from recognizer.embedder import embed_tensor
    from recognizer.preprocess import to_tensor

    common.set_threads(args.threads)
    torch_rec = Recognizer(args.model, threads=args.threads)
    onnx_rec = Recognizer(torch_rec.artifact, threads=args.threads, backend="onnx")
    celeba = Path(args.data) / "celeba1k" / "img_align_celeba"
    paths = sorted(celeba.glob("*.jpg"))[:: max(1, 23948 // args.faces)][: args.faces]
    crops = np.stack([torch_rec.prepare(p, "frame") for p in paths])
    model = torch_rec.embedder.model

    def bf16(c: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            x = to_tensor(c, torch_rec.recipe).contiguous(memory_format=torch.channels_last)
            return embed_tensor(model, x, torch_rec.embedder.flip_average).numpy()

    ways = {"torch fp32 (today)": torch_rec.embed, "onnxruntime fp32": onnx_rec.embed}
    if native_bf16():
        ways["torch bf16 autocast"] = bf16
    if args.int8:  # the product's: the parameters beside the model (trainer calibrate-int8)
        ways["onnxruntime int8 (INFERENCE_BACKEND=onnx-int8)"] = Recognizer(
            args.model, threads=args.threads, backend="onnx-int8").embed
    ref = torch_rec.embed(crops)
    result: dict = {"faces": len(crops), "ways": {}}
    for name, fn in ways.items():
        cos = np.sum(fn(crops) * ref, axis=1)
        result["ways"][name] = {"cos_min": float(cos.min()), "cos_median": float(np.median(cos)),
                                "one": [], "batch32": []}
    for r in range(args.rounds):
        for name, fn in (list(ways.items()) if r % 2 == 0 else list(ways.items())[::-1]):
            one = common.time_calls(lambda i=iter(range(10**6)): fn(crops[next(i) % len(crops)][None]), 5, warmup=1)
            batch = common.time_calls(lambda: fn(crops[:32]), 1, warmup=1 if r == 0 else 0)
            result["ways"][name]["one"].extend(one)
            result["ways"][name]["batch32"].extend([b / 32 for b in batch])
    if args.ir:
        ir = Path(args.data) / "celeba_ir"
        rows = list(csv.DictReader(open(ir / "celebA_anno_query.csv")))
        labels = np.array([r["id"] for r in rows])
        sets = {"query": [ir / "celebA_query" / r["img"] for r in rows],
                "distractors": sorted((ir / "celebA_distractors").glob("*.jpg"))}
        for name, fn in ways.items():
            emb = {k: np.concatenate([fn(np.stack([torch_rec.prepare(p, "crop") for p in v[s:s + 64]]))
                                      for s in range(0, len(v), 64)]) for k, v in sets.items()}
            result["ways"][name]["tpr_at_fpr_0.01"] = tpr_at_fpr(emb, labels)
    for w in result["ways"].values():
        w["one"], w["batch32"] = common.stats(w["one"]), common.stats(w["batch32"])
    return result


def table(res: dict) -> str:
    base = res["ways"]["torch fp32 (today)"]
    rows = []
    for name, w in res["ways"].items():
        tpr = w.get("tpr_at_fpr_0.01")
        rows.append([name, common.ms(w["one"]["median"]), common.ms(w["one"]["p95"]),
                     common.ratio(base["one"]["median"], w["one"]["median"]), common.ms(w["batch32"]["median"]),
                     common.ratio(base["batch32"]["median"], w["batch32"]["median"]),
                     f"{w['cos_min']:.5f}", "n/a" if tpr is None else f"{tpr:.4f}",
                     "yes" if w["cos_min"] >= 0.995 and (tpr is None or abs(tpr - base.get("tpr_at_fpr_0.01", tpr))
                                                        < 0.005) else "no"])
    return common.markdown_table(["way", "1 face ms (median)", "p95", "speed-up (1)", "ms per face in 32",
                                  "speed-up (32)", f"min cosine to today ({res['faces']} faces)",
                                  "celeba_ir TPR@FPR 0.01", "accepted"], rows)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--model", default=str(common.DEFAULT_MODEL), help="model artifact")
    p.add_argument("--ir", action="store_true", help="also compare celeba_ir TPR at FPR 0.01 (embeds 3,223 crops per way)")
    p.add_argument("--int8", action="store_true", help="also INFERENCE_BACKEND=onnx-int8 (needs <model>.int8.json)")
    args = p.parse_args(argv)
    args.faces, args.rounds = (64, 2) if args.quick else (256, 6)
    start = time.perf_counter()
    res = run(args)
    return common.finish("embed_speed", args, res, table(res), start, [])


if __name__ == "__main__":
    raise SystemExit(main())
