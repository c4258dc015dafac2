"""Does bf16 training cost accuracy? Two short runs of the real trainer, identical but for the
precision (fp32 vs bf16 autocast + channels_last), on the same identities, seed and split.

The product's ``cpu`` config trains in bf16 because it is faster here; this checks, at a size
that fits a benchmark, that the embeddings it learns are as good: closed-set top-1 on held-out
images and open-set TAR at FAR 1e-2 on held-out identities after the same number of epochs.

    OMP_NUM_THREADS=2 python -m bench.precision_check --identities 150 --epochs 4
"""
from __future__ import annotations

import tempfile
import time

from bench import common

KEYS = ("loss", "train_accuracy", "closed_top1", "open_roc_auc", "open_tar@far=0.01", "images_per_second")


def run(precision: str, identities: int, epochs: int, data, cache) -> dict:
    from trainer.configs import get_config
    from trainer.fit import Trainer

    config = get_config("cpu", precision=precision, channels_last=precision == "bf16", epochs=epochs,
                        limit_identities=identities, open_identities=max(2, identities // 10),
                        warmup_epochs=0.5, margin_warmup_epochs=1.0)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer = Trainer(data, config, out, cache_dir=cache)
        trainer.fit()
        return {**{k: trainer.history[-1].get(k) for k in KEYS}, "wall_seconds": time.perf_counter() - start}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--identities", type=int, default=150)
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args()
    if args.quick:
        args.identities, args.epochs = 12, 1
    common.set_threads(args.threads)
    data = common.data_dir(args, "celeba1k")
    if data is None:
        from bench.datasets import make_synthetic_celeba

        data = make_synthetic_celeba(common.cache_dir() / "synthetic_celeba", identities=args.identities, per_identity=12)
        print(f"no celeba1k under {args.data}: synthetic faces (plumbing only)")
    results = {p: run(p, args.identities, args.epochs, data, str(common.cache_dir())) for p in ("fp32", "bf16")}
    rows = [[k, common.num(results["fp32"][k]), common.num(results["bf16"][k]),
             common.ratio(results["bf16"][k], results["fp32"][k])] for k in KEYS + ("wall_seconds",)]
    print(f"{args.identities} identities, {args.epochs} epochs, same seed and split\n")
    print(common.markdown_table(["metric (last epoch)", "fp32", "bf16", "bf16 / fp32"], rows))
    common.write_json("precision_check", args, {"identities": args.identities, "epochs": args.epochs, **results})


if __name__ == "__main__":
    main()
