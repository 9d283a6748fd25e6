"""Locks across real worker processes: strict order, no overlap, no error in any log."""

from __future__ import annotations

import datetime as dt
import itertools
import os

import pytest
from worker_semantics_helpers import EFFECTS_DDL, error_lines, make_app, wait_for, workers

SUCCEEDED = "SELECT count(*) AS n FROM procq_jobs WHERE status = 'succeeded'"


def assert_strict_order(db, expected_n: list[int]) -> None:
    rows = db.execute(
        "SELECT n, started_at, finished_at FROM effects ORDER BY started_at"
    ).fetchall()
    assert [r["n"] for r in rows] == expected_n
    for before, after in itertools.pairwise(rows):
        assert after["started_at"] >= before["finished_at"], "two jobs of one lock overlapped"


def test_lock_order_across_two_processes_with_a_future_head_job(db_url: str, db) -> None:
    db.execute(EFFECTS_DDL)
    app = make_app(db_url)
    with app.open():
        record = app.get_task("record")
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        future = record.configure(lock="L", schedule_at=later).defer(n=-1)
        unread = record.configure(lock="L", queue="unread").defer(n=-2)
        for n in range(10):
            record.configure(lock="L").defer(n=n, sleep=0.01)

    with workers(db_url, 2, "--concurrency", "3", "--queues", "default") as procs:
        assert wait_for(db, SUCCEEDED, 10) == 10
    assert_strict_order(db, list(range(10)))
    left = db.execute(
        "SELECT id, status FROM procq_jobs WHERE id IN (%s, %s) ORDER BY id", (future, unread)
    ).fetchall()
    assert [r["status"] for r in left] == ["todo", "todo"]
    assert len({r["pid"] for r in db.execute("SELECT DISTINCT pid FROM effects")}) >= 1
    for proc in procs:
        assert error_lines(proc.output) == []


@pytest.mark.parametrize(
    "jobs",
    [
        pytest.param(int(os.environ.get("PROCQ_LOCK_RACE_JOBS", "40")), id="bounded"),
        pytest.param(400, id="long", marks=pytest.mark.slow),
    ],
)
def test_eight_workers_racing_on_one_lock_keep_strict_order_without_errors(
    db_url: str, db, jobs: int
) -> None:
    db.execute(EFFECTS_DDL)
    app = make_app(db_url)
    with workers(db_url, 8, "--concurrency", "2", "--fetch-job-polling-interval", "0.2") as procs:
        with app.open():
            record = app.get_task("record").configure(lock="hot")
            ids = record.batch_defer(*({"n": n} for n in range(jobs)))
        assert wait_for(db, SUCCEEDED, jobs, timeout=60) == jobs
        outputs = [proc.output for proc in procs]
    assert len(ids) == jobs
    assert_strict_order(db, list(range(jobs)))
    pids = {r["pid"] for r in db.execute("SELECT DISTINCT pid FROM effects")}
    assert len(pids) >= 2, "the jobs should be spread over several workers"
    for output in outputs:
        assert error_lines(output) == [], output
        assert "WARNING" not in output, output
