"""A periodic task with three worker processes: every tick deferred and run exactly once."""

from __future__ import annotations

import os
import time

import pytest
from worker_semantics_helpers import EFFECTS_DDL, error_lines, workers


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(float(os.environ.get("PROCQ_PERIODIC_SECONDS", "6")), id="bounded"),
        pytest.param(30.0, id="long", marks=pytest.mark.slow),
    ],
)
def test_three_workers_run_each_tick_exactly_once(db_url: str, db, seconds: float) -> None:
    db.execute(EFFECTS_DDL)
    env = {"PROCQ_TEST_PERIODIC": "1"}
    with workers(db_url, 3, env=env) as procs:
        time.sleep(seconds)
        outputs = [p.output for p in procs]
    jobs = db.execute(
        "SELECT id, status, (args->>'timestamp')::bigint AS ts FROM procq_jobs ORDER BY ts"
    ).fetchall()
    stamps = [j["ts"] for j in jobs]
    assert len(stamps) >= seconds - 2
    assert stamps == list(range(stamps[0], stamps[0] + len(stamps))), "a tick missed or doubled"
    # every tick ran once, but a tick deferred as the workers stopped may still wait
    done = [j for j in jobs if j["status"] == "succeeded"]
    assert {j["status"] for j in jobs} <= {"succeeded", "todo"}
    assert len(done) >= len(jobs) - 1
    effects = db.execute("SELECT job_id, n FROM effects ORDER BY n").fetchall()
    assert [(e["job_id"], e["n"]) for e in effects] == [(j["id"], j["ts"]) for j in done]
    ticks = db.execute("SELECT count(*) AS n FROM procq_periodic_defers").fetchone()["n"]
    assert ticks == len(jobs)
    deferring = [o.count("periodic job") for o in outputs]
    assert sum(deferring) == len(jobs)
    for output in outputs:
        assert error_lines(output) == []
