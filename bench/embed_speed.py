"""Embedding: eager PyTorch fp32 (today) against ONNX Runtime fp32 and PyTorch bf16 autocast.

In one process, on real aligned faces (CelebA frames cropped by the model's recipe), each way
is timed for one face (what identify embeds for a one-face photo) and per face in a batch of 32,
the ways taking turns within every round so that all see the same machine load. Each way's
embeddings are compared with today's by cosine (accepted at >= 0.995), and with ``--ir`` the
celeba_ir open-set protocol's TPR at FPR 0.01 is computed for each (accepted if it moves by
less than 0.005). bf16 runs only where the CPU has native bf16 (AMX or AVX512-BF16). With
``--int8``, ONNX Runtime's static int8 quantization (QDQ, per-channel 7-bit weights, which avoid
the u8s8 overflow of CPUs without VNNI) is calibrated on other CelebA frames than the timed ones and
joins the comparison under the same acceptance bars.

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


def onnx_int8(onnx_rec, calibration: np.ndarray, threads: int):
    """``onnx_rec``'s embed function with its fp32 graph swapped for a static int8 one.

    The graph is quantized with ONNX Runtime's own tooling, min/max-calibrated on
    ``calibration`` (aligned uint8 crops, flipped too where the model averages flips). The
    embedder's pre- and post-processing (pixel normalisation, flip averaging, L2) stay the
    product's: only the session changes."""
    import tempfile

    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    from recognizer.preprocess import to_tensor

    embedder = onnx_rec.embedder
    batches = [to_tensor(calibration[s:s + 16], embedder.recipe).numpy() for s in range(0, len(calibration), 16)]
    if embedder.flip_average:
        batches += [b[:, :, :, ::-1].copy() for b in batches]

    class Faces(CalibrationDataReader):
        def __init__(self) -> None:
            self.rest = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self.rest, None)
            return None if batch is None else {"x": batch}

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = max(1, threads), 1
    with tempfile.TemporaryDirectory(prefix="embed-int8-") as tmp:  # the session keeps the graph in memory
        work = Path(tmp)
        quant_pre_process(str(embedder._onnx.path), str(work / "pre.onnx"))  # noqa: SLF001 - the cached graph
        quantize_static(str(work / "pre.onnx"), str(work / "int8.onnx"), Faces(), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        embedder._onnx.session = ort.InferenceSession(str(work / "int8.onnx"), options,  # noqa: SLF001
                                                      providers=["CPUExecutionProvider"])
    return onnx_rec.embed


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
    if args.int8:  # calibrated on frames between the timed ones, never on them
        timed = set(paths)
        others = [q for q in sorted(celeba.glob("*.jpg")) if q not in timed]
        others = others[:: max(1, len(others) // 128)][:128]
        calibration = np.stack([torch_rec.prepare(p, "frame") for p in others])
        ways["onnxruntime int8 (static, calibrated)"] = onnx_int8(
            Recognizer(torch_rec.artifact, threads=args.threads, backend="onnx"), calibration, args.threads)
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
    p.add_argument("--int8", action="store_true", help="also ONNX Runtime static int8 (calibrated on 128 other frames)")
    args = p.parse_args(argv)
    args.faces, args.rounds = (64, 2) if args.quick else (256, 6)
    start = time.perf_counter()
    res = run(args)
    return common.finish("embed_speed", args, res, table(res), start, [])


if __name__ == "__main__":
    raise SystemExit(main())
