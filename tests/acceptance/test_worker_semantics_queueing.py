"""Queueing locks with real worker processes: conflicts at defer, and at retry."""

from __future__ import annotations

import pytest
from worker_semantics_helpers import EFFECTS_DDL, error_lines, make_app, wait_for, workers

from procq_sqla import AlreadyEnqueued

STATUS = "SELECT status FROM procq_jobs WHERE id = %(id)s"


def test_queueing_lock_conflicts_at_defer_and_at_retry(db_url: str, db) -> None:
    db.execute(EFFECTS_DDL)
    app = make_app(db_url)
    with app.open():
        flaky = app.get_task("record_retry").configure(queueing_lock="nightly-sync")
        running = flaky.defer(n=1, fail_times=5, sleep=1.0)
        with pytest.raises(AlreadyEnqueued):
            flaky.defer(n=99)  # the first one is still waiting
    with workers(db_url, 1, "--queues", "default") as (proc,), app.open():
        assert wait_for(db, STATUS, "doing", id=running) == "doing"

        # the first one runs: a new one may wait (parked in a queue nobody reads)
        waiting = (
            app.get_task("record_retry")
            .configure(queueing_lock="nightly-sync", queue="parked")
            .defer(n=2)
        )
        with pytest.raises(AlreadyEnqueued):
            flaky.defer(n=3)
        # the running job fails and wants a retry: it would collide with the waiting one
        assert wait_for(db, STATUS, "failed", id=running) == "failed"
        output = proc.output
    row = db.execute("SELECT * FROM procq_jobs WHERE id = %s", (running,)).fetchone()
    assert row["attempts"] == 1
    assert row["last_error"].endswith(
        "not retried: another job with the same queueing lock is already waiting"
    )
    assert (
        db.execute("SELECT status FROM procq_jobs WHERE id = %s", (waiting,)).fetchone()["status"]
        == "todo"
    )
    assert (
        db.execute("SELECT count(*) AS n FROM procq_jobs WHERE status = 'doing'").fetchone()["n"]
        == 0
    )
    assert [line for line in error_lines(output) if "failing on purpose" not in line] == []
