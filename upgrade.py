"""Model upgrades that keep the gallery: ``python upgrade.py {status,run,switch,drop}``.

    status                  the serving version and every kept version: complete or people to embed
    run [--model PATH]      keep the new model's version (NEXT_MODEL_PATH by default), embed every
                            kept face crop with it (progress bar), then switch servers to it
                            (--no-switch: stop once it is complete)
    switch VERSION          make a complete version the one servers answer with
    drop VERSION            delete an old version's embeddings once servers no longer need it

Settings (REDIS_URL, REDIS_KEY_PREFIX, KEEP_FACE_CROPS, TORCH_THREADS ...) come from the
environment, as for the server and the worker. The whole procedure: docs/SERVICE.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from recognizer.errors import FaceServiceError
from service import versions
from service.app import connect_redis
from service.config import ServiceConfig, load_config
from service.errors import UpgradeRefusedError
from service.models import load_recognizer
from service.reembed import reembed_pending
from service.store import GalleryStore


SWITCH_ATTEMPTS = 10


def _store(config: ServiceConfig, version: str = "", dim: int = 0) -> GalleryStore:
    return GalleryStore(connect_redis(config), version, dim, prefix=config.redis_key_prefix,
                        stream_maxlen=config.change_stream_maxlen)


def run(config: ServiceConfig, model: str | None, switch: bool, progress: bool = True) -> dict:
    """Register the model's version, re-embed until it is complete, switch (unless told not to)."""
    path = Path(model) if model else config.resolved_next_model_path()
    if path is None:
        raise UpgradeRefusedError("no new model: pass --model PATH or set NEXT_MODEL_PATH")
    recognizer = load_recognizer(path, config)
    store = _store(config, recognizer.version, recognizer.dim)
    queued = versions.register(store, recognizer.version, config.keep_face_crops)
    print(f"model {recognizer.version}: " + (f"{queued} people queued" if queued >= 0 else "resuming"),
          file=sys.stderr)
    summary = {"version": recognizer.version, "people": 0, "photos": 0, "seconds": 0.0, "passes": 0}
    for attempt in range(SWITCH_ATTEMPTS):
        report = reembed_pending(store, recognizer, progress=progress)
        for key in ("people", "photos", "seconds", "passes"):
            summary[key] += getattr(report, key)
        if report.stuck:
            raise UpgradeRefusedError(
                f"{len(report.stuck)} person(s) have photos that cannot be re-embedded (no kept crop): enroll "
                "them again, then rerun; servers keep answering with the current model. People: "
                + ", ".join(report.stuck[:10]), **summary)
        if not switch:
            break
        try:  # refused if a photo was enrolled, by a process without this model, since the last pass
            versions.switch(store, recognizer.version)
            summary["switched"] = True
            break
        except UpgradeRefusedError:
            if attempt == SWITCH_ATTEMPTS - 1:
                raise
    summary["seconds"] = round(summary["seconds"], 2)
    summary["photos_per_second"] = round(summary["photos"] / summary["seconds"], 1) if summary["seconds"] else 0.0
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python upgrade.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="versions kept, complete, serving")
    p_run = sub.add_parser("run", help="re-embed every kept crop with a new model, then switch to it")
    p_run.add_argument("--model", help="the new model.pt (default: NEXT_MODEL_PATH)")
    p_run.add_argument("--no-switch", action="store_true", help="stop when complete; switch later")
    p_switch = sub.add_parser("switch", help="make a complete version the serving one")
    p_switch.add_argument("version")
    p_drop = sub.add_parser("drop", help="delete an old version's embeddings")
    p_drop.add_argument("version")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        config = load_config()
        if args.command == "status":
            out = versions.read_state(_store(config)).to_dict()
        elif args.command == "run":
            out = run(config, args.model, switch=not args.no_switch)
        elif args.command == "switch":
            versions.switch(_store(config), args.version)
            out = {"serving": args.version}
        else:
            from tqdm import tqdm

            with tqdm(unit="key", desc=f"drop {args.version}") as bar:
                out = {"dropped": args.version, "keys_deleted": versions.drop(_store(config), args.version, bar.update)}
    except FaceServiceError as exc:
        print(f"upgrade: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
