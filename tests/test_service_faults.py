"""Fault tests with real processes (issue 12): ``python worker.py`` killed with SIGKILL mid-job,
and Redis killed and restarted mid-job. The job is picked up again and finishes with nothing
lost and nothing stored or reported twice; the workers outlive Redis. The scenarios are
``bench/faults.py``'s, here with the tiny model and a 2 s heartbeat (the service default is 10 s:
``python -m bench.faults`` measures that)."""
from __future__ import annotations

import pytest

from bench.faults import run_scenario
from bench.service_stack import Stack

HEARTBEAT = 2  # s: a dead worker's job expires after 3 beats; cleanup runs every beat


@pytest.mark.parametrize("kind", ["worker", "redis"])
def test_job_survives_a_fault(kind, tiny_model):
    with Stack(tiny_model) as stack:
        result = run_scenario(stack, kind, images=24, batch=2, heartbeat=HEARTBEAT, down=2.0, timeout=180)
    print(result)
    assert result["status"] == "finished"
    assert result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["summary"] == {"enrolled": 24} and result["stored"] == 24, result
    # Bound: Redis down (2 s) + 3 missed beats + a cleanup beat (the first retry is immediate),
    # + 15 s of slack for 2 busy cores.
    assert result["picked_up_again_s"] < 2 + 3 * HEARTBEAT + HEARTBEAT + 15, result
    if kind == "redis":
        assert result["workers_alive"] == 2, result
        assert result["new_job_after_restart_s"] < 60, result
