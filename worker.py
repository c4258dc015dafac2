"""RQ worker entry point for enrollment jobs: ``python worker.py [--burst] [QUEUE ...]``.

The model is loaded once, in this process, before the first job is taken. Jobs run in
this same process (:class:`service.rqworker.EnrollWorker`, a ``SimpleWorker``: no fork per
job): forking a process whose torch already ran multi-threaded ops can deadlock the child in
OpenMP, and a fresh child would pay the model load again for every job. A running job
heartbeats every ``JOB_HEARTBEAT`` s, so the job of a worker that died is retried within
about a minute, and the worker outlives a Redis restart. Failed attempts are retried by RQ's
scheduler (``--with-scheduler`` semantics) at the intervals of ``JOB_RETRY_INTERVALS``;
the scheduler is a forked child that only talks to Redis, never to torch.
"""
from __future__ import annotations

import argparse
import logging
import sys

from recognizer.errors import FaceServiceError
from service import jobs
from service.app import connect_redis
from service.config import load_config
from service.models import build_models
from service.rqworker import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python worker.py", description=__doc__.splitlines()[0])
    parser.add_argument("queues", nargs="*", help="queues to serve (default: ENROLL_QUEUE)")
    parser.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    parser.add_argument("--name", default=None, help="worker name (default: random)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config()
        models = build_models(config)  # before any job: fail fast on a bad MODEL_PATH / NEXT_MODEL_PATH
    except FaceServiceError as exc:
        print(f"worker: {exc.message}", file=sys.stderr)
        return 2
    jobs.set_recognizer(models)
    logging.getLogger("worker").info("model(s) %s loaded; torch threads %d", ", ".join(models.versions),
                                     config.torch_threads)
    connection = connect_redis(config)
    serve(connection, args.queues or [config.enroll_queue], heartbeat=config.job_heartbeat,
          result_ttl=config.result_ttl, name=args.name, burst=args.burst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
