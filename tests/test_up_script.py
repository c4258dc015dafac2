"""scripts/up.sh chooses its Redis with care: never another application's database.

Only the refusals are run here (they stop before any server starts): a Redis that is not this
project's on the port up.sh would use, and a REDIS_URL where nothing answers.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def run_up(tiny_model: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_PORT", "HOST")}
    environ.update(MODEL_PATH=str(tiny_model), PORT=str(free_port()), **env)
    proc = subprocess.Popen(["scripts/up.sh"], cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # it went on to serve: stop everything it started
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        raise AssertionError(f"scripts/up.sh did not refuse:\n{out}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def test_up_leaves_another_applications_redis_alone(tiny_model, redis_server, redis_db):
    redis_db.set("their:key", "their value")
    out = run_up(tiny_model, REDIS_PORT=str(redis_server.port))
    assert out.returncode == 1, out.stdout
    assert f"Another Redis (data in {redis_server.workdir.resolve()}) answers on 127.0.0.1:{redis_server.port}" \
        in out.stdout, out.stdout
    assert "left alone" in out.stdout and "Set REDIS_PORT" in out.stdout
    assert redis_db.keys("*") == [b"their:key"]  # nothing written


def test_up_says_when_redis_url_does_not_answer(tiny_model):
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    out = run_up(tiny_model, REDIS_URL=url)
    assert out.returncode == 1, out.stdout
    assert "No Redis answers at REDIS_URL=redis://***@127.0.0.1:" in out.stdout, out.stdout
    assert "secret" not in out.stdout
