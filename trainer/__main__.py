"""Command line: ``python -m trainer fit ...`` and ``python -m trainer evaluate ...``."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .data import parse_shard


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a model and write RUN_DIR/model.pt")
    fit.add_argument("--data", required=True, help="CelebA layout or root/<person>/<image>; the split comes from it")
    fit.add_argument("--extra", action="append", default=[], metavar="DIR",
                     help="another source, training-only (e.g. a `trainer prepare` output); repeatable")
    fit.add_argument("--config", default=None, help="tiny | cpu | gpu (default: gpu with CUDA, else cpu)")
    fit.add_argument("--out", required=True, help="run directory")
    fit.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    fit.add_argument("--init", default=None, metavar="MODEL",
                     help="start from this model's weights (a run's model.pt or models/facerec.pt): a fine-tune")
    fit.add_argument("--epochs", type=int, default=None, help="override the config's epoch count")
    fit.add_argument("--until", type=int, default=None, metavar="N",
                     help="stop after epoch N (the schedule still spans --epochs); continue later with --resume")
    fit.add_argument("--budget-minutes", type=float, default=None, metavar="M",
                     help="fit the epochs into M minutes (loading and --init come before): after epoch 1, keep "
                          "only the epochs that fit at its speed (for a machine lent for a fixed time)")
    fit.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="override any config field, e.g. --set random_erase=0.5 (repeatable; for ablations)")
    fit.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    fit.add_argument("--cache", default=".cache", help="where decoded crops are cached ('' for none)")
    fit.add_argument("--teacher-cache", default=".cache", help="where `trainer teacher` cached dlib's vectors")
    fit.add_argument("--device", default=None)

    prep = sub.add_parser("prepare", help="fetched CelebA images + labels -> the CelebA layout the loader reads")
    prep.add_argument("--source", required=True, help="folder holding the fetched images")
    prep.add_argument("--labels", required=True, help="<file> <identity> per line (celeba_extra/labels_*.txt)")
    prep.add_argument("--kind", required=True, choices=["crops", "half-res"])
    prep.add_argument("--out", required=True, help="output folder, outside the repository")
    prep.add_argument("--exclude", default=None, help="identities never to train on (celeba_extra/excluded_ids.txt)")
    prep.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="K/N",
                      help="this process does every N-th image from K (0 <= K < N)")
    prep.add_argument("--threads", type=int, default=None)

    tea = sub.add_parser("teacher", help="cache dlib's embedding of every image of a CelebA-layout source")
    tea.add_argument("--data", required=True, help="celeba1k or a `trainer prepare` output")
    tea.add_argument("--cache", default=".cache", help="cache folder (outside git; default .cache)")
    tea.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="K/N",
                      help="this process does every N-th image from K (0 <= K < N)")
    tea.add_argument("--threads", type=int, default=None)
    tea.add_argument("--views", choices=("plain", "mirror"), default="plain",
                     help="mirror: the mean of dlib's descriptors of the chip and its mirror (for --set teacher_views=mirror)")

    rel = sub.add_parser("release", help="a run's model.pt -> models/facerec.pt (fp16), measured, with its model card")
    rel.add_argument("--model", required=True, help="the run's model.pt (fp32)")
    rel.add_argument("--celeba-ir", required=True, help="celeba_ir folder (the card's open-set numbers)")
    rel.add_argument("--celeba1k", default=None, help="the training set, for closed-set and open-set on the run's split")
    rel.add_argument("--photos", default=None, help="photos/ with master.csv (a regression figure for the tests)")
    rel.add_argument("--out", default="models", help="release folder (default: models/)")
    rel.add_argument("--cpu", default=None, help="the CPU it was trained on, when the model does not record it")
    rel.add_argument("--force", action="store_true", help="release even if fp16 disagrees with fp32")
    rel.add_argument("--threads", type=int, default=None)

    bun = sub.add_parser("bundle", help="carry training caches to a lent machine, and its model back, in parts")
    bun_sub = bun.add_subparsers(dest="action", required=True)
    bpack = bun_sub.add_parser("pack", help="cached crops (WebP) + teacher vectors -> OUT/p0, OUT/p1, ...")
    bpack.add_argument("--data", required=True, action="append", help="a source as given to fit; repeatable, in order")
    bpack.add_argument("--input-size", default="96,80", help="the config's input size, H,W (default 96,80)")
    bpack.add_argument("--out", required=True, help="an ignored folder (parts hold face data: never commit them)")
    bpack.add_argument("--part-mib", type=float, default=55.0)
    bpack.add_argument("--quality", type=int, default=90, help="WebP quality (90: mean error ~2 of 255)")
    bpack.add_argument("--cache", default=".cache")
    bunpack = bun_sub.add_parser("unpack", help="parts -> the same caches, with placeholder sources")
    bunpack.add_argument("parts", nargs="+", help="every part folder, p0 among them")
    bunpack.add_argument("--cache", default=".cache")
    bshrink = bun_sub.add_parser("shrink", help="a run's model.pt -> fp16, in OUT/model.part-K pieces")
    bshrink.add_argument("--model", required=True)
    bshrink.add_argument("--out", required=True)
    bshrink.add_argument("--piece-mib", type=float, default=15.0)
    bjoin = bun_sub.add_parser("join", help="model.part-K pieces -> one verified model file")
    bjoin.add_argument("folder")
    bjoin.add_argument("--out", required=True)

    avg = sub.add_parser("average", help="a model as a weighted sum of models' weights (a soup, or extrapolation), "
                                        "calibrated on the held-out identities")
    avg.add_argument("--model", required=True, action="append", help="a model file; repeatable (one alone: with --bn-images)")
    avg.add_argument("--weights", required=True, help="one per --model, summing to 1: 0.5,0.5 or 1.5,-0.5")
    avg.add_argument("--celeba1k", required=True, help="the training set: the threshold is set on its held-out people")
    avg.add_argument("--out", required=True, help="where the new model.pt goes (e.g. runs/NAME/model.pt)")
    avg.add_argument("--bn-images", type=int, default=0, metavar="N",
                     help="re-estimate BatchNorm statistics on N training images (0: combine them like the weights)")
    avg.add_argument("--cache", default=".cache")
    avg.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                     help="the serving embedder's backend for the measurement (onnx: same figures, faster on CPU)")
    avg.add_argument("--threads", type=int, default=None)

    cmp_ = sub.add_parser("compare", help="model A against model B on the same held-out people, with a paired "
                                          "bootstrap over identities (is a difference more than luck?)")
    cmp_.add_argument("--model", required=True, action="append", help="A, then B (two models of one split)")
    cmp_.add_argument("--celeba1k", required=True, help="the training set: both are measured on its held-out people")
    cmp_.add_argument("--celeba-ir", default=None, help="also celeba_ir (the test set: only after a choice)")
    cmp_.add_argument("--rounds", type=int, default=1000, help="identity resamplings (default 1000)")
    cmp_.add_argument("--json", default=None, help="also write the report here")
    cmp_.add_argument("--cache", default=".cache")
    cmp_.add_argument("--threads", type=int, default=None)

    cal = sub.add_parser("calibrate-norm", help="the AS-norm threshold of a model, for a cohort of people from the "
                                                  "user's gallery (written beside the model)")
    cal.add_argument("--model", required=True)
    cal.add_argument("--celeba1k", required=True, help="the training set: calibrated on its held-out people")
    cal.add_argument("--out", default=None, help="default: <model stem>.score_norm.json beside the model")
    cal.add_argument("--cohort-size", type=int, default=None, help="people in the cohort (default 400)")
    cal.add_argument("--k", type=int, default=None, help="top cosines per face against the cohort (default 100)")
    cal.add_argument("--draws", type=int, default=None, help="cohorts drawn from the training identities (default 20)")
    cal.add_argument("--cache", default=".cache")
    cal.add_argument("--threads", type=int, default=None)

    strangers = sub.add_parser("calibrate-strangers", help="how often a stranger passes one enrolled person, per "
                                                           "cosine threshold (written beside the model): the "
                                                           "service's STRANGER_RATE threshold rests on it")
    strangers.add_argument("--model", required=True)
    strangers_on = strangers.add_mutually_exclusive_group(required=True)
    strangers_on.add_argument("--celeba1k", help="the training set: measured on its held-out people")
    strangers_on.add_argument("--people", help="or a folder of your own people (<person>/<photo>), none of them "
                                               "trained on: photos from your cameras")
    strangers.add_argument("--out", default=None, help="default: <model stem>.strangers.json beside the model")
    strangers.add_argument("--draws", type=int, default=None, help="draws of each person's template photos (default 5)")
    strangers.add_argument("--training-people", action="store_true",
                           help="also report the training people's rates (minutes more)")
    strangers.add_argument("--cache", default=".cache")
    strangers.add_argument("--threads", type=int, default=None)

    q8 = sub.add_parser("calibrate-int8", help="the model's int8 parameters for INFERENCE_BACKEND=onnx-int8, measured "
                                               "on training images, checked on held-out people (written beside the model)")
    q8.add_argument("--model", required=True)
    q8.add_argument("--celeba1k", required=True, help="the training set: ranges from its training split, the "
                                                      "check on its held-out people")
    q8.add_argument("--out", default=None, help="default: <model stem>.int8.json beside the model")
    q8.add_argument("--images", type=int, default=None, help="training crops to measure on, with mirrors (default 128)")
    q8.add_argument("--celeba-ir", default=None, help="also report celeba_ir TPRs both ways (a measurement only)")
    q8.add_argument("--cache", default=".cache")
    q8.add_argument("--threads", type=int, default=None)

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
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.command == "fit":
        from .configs import config_from_cli
        from .fit import Trainer

        name = args.config or ("gpu" if torch.cuda.is_available() else "cpu")
        if args.budget_minutes is not None and args.budget_minutes <= 0:
            print("python -m trainer fit: --budget-minutes must be positive", file=sys.stderr)
            return 2
        try:
            config = config_from_cli(name, args.epochs, args.set)
        except (KeyError, ValueError) as exc:
            print(f"python -m trainer fit: {exc.args[0]}", file=sys.stderr)
            return 2
        Trainer(args.data, config, args.out, resume=args.resume, cache_dir=args.cache or None,
                device=args.device, extra_dirs=args.extra,
                teacher_cache=args.teacher_cache, init=args.init).fit(
                    until=args.until, budget_seconds=args.budget_minutes * 60 if args.budget_minutes else None)
        return 0
    if args.command == "prepare":
        from .prepare import prepare

        print(prepare(args.source, args.labels, args.kind, args.out, args.exclude, args.shard))
        return 0
    if args.command == "teacher":
        from .teacher import fill

        print(fill(args.data, args.cache, args.shard, views=args.views))
        return 0
    if args.command == "release":
        from pathlib import Path

        from .release import release

        report = release(Path(args.model), Path(args.out), Path(args.celeba_ir),
                         Path(args.celeba1k) if args.celeba1k else None, force=args.force, cpu=args.cpu,
                         photos=Path(args.photos) if args.photos else None)
        print(json.dumps({k: report[k] for k in ("version", "file_bytes", "agreement", "celeba_ir")}, indent=1,
                         default=float))
        return 0
    if args.command == "average":
        from pathlib import Path

        from .average import average_models, calibrate, reestimate_batchnorm, training_crops

        try:
            weights = [float(w) for w in args.weights.split(",")]
            if len(args.model) == 1 and args.bn_images <= 0:
                raise ValueError("one model alone is only changed by --bn-images N (its BatchNorm statistics)")
            artifact = average_models([Path(m) for m in args.model], weights)
            if args.bn_images > 0:
                reestimate_batchnorm(artifact, training_crops(artifact, Path(args.celeba1k), args.cache or None,
                                                              args.bn_images))
        except ValueError as exc:
            print(f"python -m trainer average: {exc}", file=sys.stderr)
            return 2
        report = calibrate(artifact, Path(args.celeba1k), args.cache or None, Path(args.out), args.backend)
        print(json.dumps({"version": artifact.version, "threshold": artifact.threshold,
                          "closed_set": report["closed_set"], "open_set": report["open_set"]}, default=float))
        return 0
    if args.command == "compare":
        from pathlib import Path

        from .compare import compare_models, format_comparison

        if len(args.model) != 2 or args.rounds < 1:
            print("python -m trainer compare: give --model twice (A, then B) and --rounds of at least 1",
                  file=sys.stderr)
            return 2
        try:
            report = compare_models(Path(args.model[0]), Path(args.model[1]), Path(args.celeba1k), args.rounds,
                                    args.cache or None, Path(args.celeba_ir) if args.celeba_ir else None)
        except ValueError as exc:
            print(f"python -m trainer compare: {exc}", file=sys.stderr)
            return 2
        print(format_comparison(report))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        return 0
    if args.command == "calibrate-norm":
        from pathlib import Path

        from . import score_norm

        try:
            calibration, report = score_norm.calibrate_model(
                Path(args.model), Path(args.celeba1k), args.cache or None, Path(args.out) if args.out else None,
                args.cohort_size or score_norm.COHORT_SIZE, args.k or score_norm.TOP_K, args.draws or score_norm.DRAWS)
        except ValueError as exc:
            print(f"python -m trainer calibrate-norm: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({"calibration": calibration.__dict__, "report": report}, indent=1))
        return 0
    if args.command == "calibrate-strangers":
        from pathlib import Path

        from . import strangers as stranger_curve

        try:
            out, draws = Path(args.out) if args.out else None, args.draws or stranger_curve.DRAWS
            if args.people:
                curve, report = stranger_curve.calibrate_people(Path(args.model), Path(args.people), out, draws)
            else:
                curve, report = stranger_curve.calibrate_model(Path(args.model), Path(args.celeba1k), args.cache or None,
                                                               out, draws, args.training_people)
        except (ValueError, FileNotFoundError) as exc:
            print(f"python -m trainer calibrate-strangers: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({"source": curve.source, "pairs": curve.pairs, "report": report}, indent=1))
        return 0
    if args.command == "calibrate-int8":
        from pathlib import Path

        from . import int8_calibration

        try:
            quantization, report = int8_calibration.calibrate_model(
                Path(args.model), Path(args.celeba1k), args.cache or None, Path(args.out) if args.out else None,
                args.images or int8_calibration.CALIBRATION_IMAGES, Path(args.celeba_ir) if args.celeba_ir else None)
        except ValueError as exc:
            print(f"python -m trainer calibrate-int8: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({"activations": len(quantization.activations), "versions": quantization.versions,
                          "report": report}, indent=1))
        return 0
    if args.command == "bundle":
        from . import bundle

        try:
            if args.action == "pack":
                size = tuple(int(v) for v in args.input_size.split(","))
                result = bundle.pack(args.data, size, args.out, args.cache, args.cache, args.part_mib, args.quality)
            elif args.action == "unpack":
                result = bundle.unpack(args.parts, args.cache, args.cache)
            elif args.action == "shrink":
                result = bundle.shrink(args.model, args.out, args.piece_mib)
            else:
                result = {"version": bundle.join(args.folder, args.out), "model": args.out}
        except (bundle.BundleError, FileNotFoundError, ValueError) as exc:
            print(f"python -m trainer bundle {args.action}: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(result))
        return 0
    from .evaluate import run_evaluation

    run_evaluation(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
