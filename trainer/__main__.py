"""Command line: ``python -m trainer fit ...`` and ``python -m trainer evaluate ...``."""
from __future__ import annotations

import argparse
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a model and write RUN_DIR/model.pt")
    fit.add_argument("--data", required=True, help="CelebA layout or root/<person>/<image>")
    fit.add_argument("--config", default=None, help="tiny | cpu | gpu (default: gpu with CUDA, else cpu)")
    fit.add_argument("--out", required=True, help="run directory")
    fit.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    fit.add_argument("--epochs", type=int, default=None, help="override the config's epoch count")
    fit.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="override any config field, e.g. --set random_erase=0.5 (repeatable; for ablations)")
    fit.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    fit.add_argument("--cache", default=".cache", help="where decoded crops are cached ('' for none)")
    fit.add_argument("--device", default=None)

    ev = sub.add_parser("evaluate", help="measure a model on standard protocols")
    ev.add_argument("--model", required=True)
    ev.add_argument("--lfw", default=None, help="LFW image root: DIR/<Name>/<Name>_0001.jpg")
    ev.add_argument("--pairs", default=None, help="LFW pairs.txt (View 2)")
    ev.add_argument("--lfw-crop-mode", default="detect", choices=["detect", "frame", "crop"])
    ev.add_argument("--celeba-ir", default=None, help="celeba_ir folder (celebA_query/, celebA_distractors/)")
    ev.add_argument("--identification", default=None, help="folder-per-person set for top-k / open-set")
    ev.add_argument("--identification-crop-mode", default="detect", choices=["detect", "frame", "crop"])
    ev.add_argument("--out", default="report.json")
    ev.add_argument("--threads", type=int, default=None)

    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "fit":
        from .configs import get_config, parse_overrides
        from .fit import Trainer

        name = args.config or ("gpu" if torch.cuda.is_available() else "cpu")
        try:
            config = get_config(name, epochs=args.epochs, **parse_overrides(args.set))
        except (KeyError, ValueError) as exc:
            print(f"python -m trainer fit: {exc.args[0]}", file=sys.stderr)
            return 2
        Trainer(args.data, config, args.out, resume=args.resume, cache_dir=args.cache or None,
                device=args.device).fit()
        return 0
    from .evaluate import run_evaluation

    run_evaluation(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
