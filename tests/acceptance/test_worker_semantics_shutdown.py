"""SIGTERM: the worker stops claiming, lets running jobs finish within the graceful
timeout, then cancels the rest and puts them back for another worker."""

from __future__ import annotations

import signal
import time

from worker_semantics_helpers import EFFECTS_DDL, error_lines, make_app, wait_for, workers


def test_sigterm_finishes_short_jobs_and_returns_long_ones(db_url: str, db) -> None:
    db.execute(EFFECTS_DDL)
    app = make_app(db_url)
    with (
        workers(db_url, 1, "--concurrency", "3", "--shutdown-graceful-timeout", "1") as (proc,),
        app.open(),
    ):
        record = app.get_task("record")
        short = record.defer(n=1, sleep=0.5)
        long = record.defer(n=2, sleep=30)
        long_sync = app.get_task("record_sync").defer(n=3, sleep=30)
        assert wait_for(db, "SELECT count(*) FROM effects", 3) == 3
        waiting = record.defer(n=4)  # all slots are busy: it waits for another worker
        term = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = proc.proc.wait(10)
        stopped_after = time.monotonic() - term
        output = proc.output
    assert code == 0
    assert 0.9 < stopped_after < 4, f"stopped after {stopped_after:.2f} s"
    rows = {r["id"]: r for r in db.execute("SELECT * FROM procq_jobs")}
    assert rows[short]["status"] == "succeeded"
    assert rows[long]["status"] == "todo"
    assert rows[long]["last_error"] == "the worker shut down before the job finished"
    # the sync task saw should_abort() turn true, so the process could exit at once
    assert rows[long_sync]["status"] == "todo"
    assert rows[long_sync]["last_error"] == "the worker shut down before the job finished"
    assert rows[waiting]["status"] == "todo"
    assert db.execute("SELECT count(*) AS n FROM procq_workers").fetchone()["n"] == 0
    assert error_lines(output) == []
