"""Aborting running jobs in a real worker process: an async task is cancelled within a
second through NOTIFY; a sync task sees should_abort() and stops."""

from __future__ import annotations

import time

import pytest
from worker_semantics_helpers import EFFECTS_DDL, error_lines, make_app, wait_for, workers

STATUS = "SELECT status FROM procq_jobs WHERE id = %(id)s"


@pytest.mark.parametrize("task_name", ["record", "record_sync"])
def test_abort_of_a_running_job(db_url: str, db, task_name: str) -> None:
    db.execute(EFFECTS_DDL)
    app = make_app(db_url)
    with workers(db_url, 1, "--abort-job-polling-interval", "30") as (proc,), app.open():
        job_id = app.get_task(task_name).defer(n=1, sleep=30)
        assert wait_for(db, "SELECT count(*) FROM effects", 1) == 1
        asked = time.monotonic()
        assert app.job_manager.abort(job_id) is True
        assert wait_for(db, STATUS, "aborted", id=job_id, timeout=5) == "aborted"
        elapsed = time.monotonic() - asked
        assert app.job_manager.abort(job_id) is False  # no longer running
        output = proc.output
    assert elapsed < 1.0, f"aborted after {elapsed:.2f} s"
    effect = db.execute("SELECT finished_at FROM effects").fetchone()
    assert effect["finished_at"] is None  # the task stopped before its end
    assert error_lines(output) == []
    assert f"aborting job {job_id} on request" in output
