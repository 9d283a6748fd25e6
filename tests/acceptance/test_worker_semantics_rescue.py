"""SIGKILL of a worker mid-job: the surviving worker rescues its jobs, nothing is lost."""

from __future__ import annotations

import signal

from worker_semantics_helpers import EFFECTS_DDL, error_lines, make_app, wait_for, workers

UNFINISHED = "SELECT count(*) FROM effects WHERE pid = %(pid)s AND finished_at IS NULL"


def test_sigkilled_workers_jobs_are_rescued_and_run_again(db_url: str, db) -> None:
    db.execute(EFFECTS_DDL)
    app = make_app(db_url)
    with workers(db_url, 2, "--concurrency", "2") as (victim, survivor), app.open():
        record = app.get_task("record_retry")
        ids = record.batch_defer(*({"n": n, "sleep": 0.3} for n in range(20)))
        pid = victim.proc.pid
        assert wait_for(db, UNFINISHED, 2, pid=pid) == 2
        victim.signal(signal.SIGKILL)
        victim.proc.wait(5)
        killed = {
            r["job_id"]
            for r in db.execute(
                "SELECT job_id FROM effects WHERE pid = %s AND finished_at IS NULL", (pid,)
            )
        }
        assert len(killed) == 2
        assert (
            wait_for(db, "SELECT count(*) FROM procq_jobs WHERE status = 'succeeded'", 20, 20) == 20
        )
        output = survivor.output
    effects = db.execute("SELECT job_id, pid, finished_at FROM effects").fetchall()
    finished = [e["job_id"] for e in effects if e["finished_at"] is not None]
    assert sorted(finished) == sorted(ids), "every job ran to its end exactly once"
    assert len(effects) == 20 + len(killed)  # the killed runs, and nothing else, ran twice
    attempts = {r["id"]: r["attempts"] for r in db.execute("SELECT id, attempts FROM procq_jobs")}
    assert {attempts[i] for i in killed} == {2}
    assert {attempts[i] for i in set(ids) - killed} == {1}
    assert output.count("rescued job") == 2
    assert "declared dead" in output
    assert error_lines(output) == []
