"""The enrollment worker process: RQ's SimpleWorker made crash-tolerant.

Three things plain ``SimpleWorker`` lacks here:

* **Heartbeats while a job runs.** A SimpleWorker runs the job in its own main thread and
  registers it as started for ``job_timeout + 60`` s (61 minutes by default): a worker killed
  with ``kill -9`` left its job ``started`` that long. Here a thread renews the job's entry in
  RQ's started registry every ``JOB_HEARTBEAT`` s with a TTL of :data:`MISSED_BEATS` beats, so a
  dead worker's job expires after about 30 s; the registry cleanup (RQ's own, run by every idle
  worker each ``JOB_HEARTBEAT`` s instead of every 10 minutes) then retries it. The job's own
  time limit (``JOB_TIMEOUT``) still ends a job that hangs while its worker lives.
* **JSON, never pickle** (:data:`service.jobs.JOB_SERIALIZER`) for everything read from Redis.
* **Surviving a Redis restart.** RQ's work loop quits on a Redis error outside its dequeue
  ("found an unhandled exception, quitting"); :func:`serve` waits for Redis and starts the
  loop again. The job that was running is retried by the cleanup above, and skips the images
  it had already recorded (:func:`service.jobs.enroll_job`).
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Sequence

import redis
from redis import Redis
from rq import SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.worker import WorkerStatus

from .jobs import JOB_SERIALIZER

log = logging.getLogger(__name__)

MISSED_BEATS = 3  # a running job's registration lasts this many heartbeats


class EnrollWorker(SimpleWorker):
    """A SimpleWorker (no fork: torch in a forked child can deadlock) that heartbeats the job
    it runs every ``heartbeat`` seconds and cleans RQ's registries as often."""

    def __init__(self, queues: Sequence[str | Queue], *, heartbeat: int = 10, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JOB_SERIALIZER)
        kwargs.setdefault("maintenance_interval", heartbeat)
        kwargs.setdefault("job_monitoring_interval", heartbeat)
        super().__init__(list(queues), **kwargs)

    @property
    def dequeue_timeout(self) -> int:
        """Wake from an idle wait in time for the next registry cleanup."""
        return max(1, int(self.maintenance_interval))

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        """RQ's dequeue, except that a job hash that does not decode (forged, or another
        serializer's) is dropped from the queue with an error in the log instead of ending
        the work loop."""
        while True:
            try:
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except redis.RedisError:
                raise
            except Exception as exc:  # noqa: BLE001
                job_id, queue = getattr(exc, "job_id", None), getattr(exc, "queue", None)
                if job_id is None or queue is None:
                    raise
                log.error("job %s in queue %s does not decode as JSON (%s): dropped, not run", job_id,
                          queue.name, type(exc).__name__)
                queue.intermediate_queue.remove(job_id)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return MISSED_BEATS * int(self.job_monitoring_interval)

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop), name=f"heartbeat-{job.id}",
                                daemon=True)
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _beat(self, job: Job, execution: Execution, stop: threading.Event) -> None:
        while not stop.wait(self.job_monitoring_interval):
            try:
                self.maintain_heartbeats(job, execution)
            except redis.RedisError as exc:  # Redis away: the job itself will notice
                log.warning("job %s: heartbeat not sent: %s", job.id, exc)


def wait_for_redis(connection: Redis, *, interval: float = 1.0, max_interval: float = 10.0) -> None:
    """Block until Redis answers a PING (backing off up to ``max_interval`` s). SIGTERM/SIGINT
    meanwhile end the process: there is no job to finish."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_now)
    while True:
        try:
            if connection.ping():
                return
        except redis.RedisError as exc:
            log.warning("waiting for Redis: %s", exc)
        time.sleep(interval)
        interval = min(max_interval, interval * 2)


def _exit_now(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(connection: Redis, queues: Sequence[str], *, heartbeat: int, result_ttl: int,
          name: str | None = None, burst: bool = False) -> None:
    """Run an :class:`EnrollWorker` until it is asked to stop (SIGTERM/SIGINT) or, with
    ``burst``, until the queues are empty; if its loop ends on a Redis error instead, wait
    for Redis and start a fresh worker (a new name: the old one may still be registered)."""
    round_ = 0
    while True:
        worker_name = name if name is None or round_ == 0 else f"{name}-{round_}"
        worker = EnrollWorker(queues, heartbeat=heartbeat, connection=connection, name=worker_name,
                              default_result_ttl=result_ttl)
        try:
            worker.work(burst=burst, with_scheduler=True)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # e.g. in its teardown
            log.warning("worker %s: Redis error: %s", worker.name, exc)
        finally:
            _stop_listening(worker)
        if burst or worker._shutdown_requested_date is not None:  # asked to stop (RQ sets it on SIGTERM/SIGINT)
            return
        log.warning("worker %s: its loop ended without a stop request (Redis gone?); restarting it once "
                    "Redis answers", worker.name)
        wait_for_redis(connection)
        round_ += 1


def _stop_listening(worker: EnrollWorker) -> None:
    """Stop the worker's pub/sub thread even when its teardown could not reach Redis (it would
    otherwise retry forever beside the next worker)."""
    thread = getattr(worker, "pubsub_thread", None)
    if thread is not None and thread.is_alive():
        thread.stop()
        thread.join(timeout=5)
