"""`procq jobs list|show|retry|cancel|queues|prune`: what they print (tables and JSON)
and what they change in procq_jobs."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
from cli_support import APP, one_line_error, procq, start_procq

Conn = psycopg.Connection[dict[str, Any]]


def insert_job(db: Conn, task: str = "add", **columns: Any) -> int:
    values = {"queue": "default", "task_name": task, "args": "{}", **columns}
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    row = db.execute(
        f"INSERT INTO procq_jobs ({names}) VALUES ({marks}) RETURNING id", list(values.values())
    ).fetchone()
    assert row is not None
    return int(row["id"])


def status_of(db: Conn, job_id: int) -> str:
    row = db.execute("SELECT status FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row["status"])


def listed_ids(db_url: str, *args: str) -> list[int]:
    result = procq("jobs", "list", "--json", *args, db_url=db_url)
    assert result.returncode == 0, result.stderr
    return [job["id"] for job in json.loads(result.stdout)]


def test_list_filters_newest_first(db_url: str, db: Conn) -> None:
    a = insert_job(db, "add", queue="q1", lock="L", queueing_lock="Q")
    b = insert_job(db, "fail", queue="q2", status="failed", finished_at="now()")
    c = insert_job(db, "add", queue="q1")
    assert listed_ids(db_url) == [c, b, a]
    assert listed_ids(db_url, "--queue", "q1", "--limit", "1") == [c]
    every_filter = ["--queue", "q1", "--task", "add", "--status", "todo", "--lock", "L"]
    assert listed_ids(db_url, *every_filter, "--queueing-lock", "Q", "--id", str(a)) == [a]
    assert listed_ids(db_url, "--task", "fail", "--status", "todo") == []


def test_list_limit_comes_from_the_environment_and_is_bounded(db_url: str, db: Conn) -> None:
    ids = [insert_job(db) for _ in range(4)]
    result = procq("jobs", "list", "--json", db_url=db_url, env={"PROCQ_JOBS_LIST_LIMIT": "3"})
    assert [j["id"] for j in json.loads(result.stdout)] == ids[::-1][:3]
    too_many = procq("jobs", "list", "--limit", "1000000", db_url=db_url)
    assert too_many.returncode == 2


def test_list_prints_a_table_with_the_jobs(db_url: str, db: Conn) -> None:
    job = insert_job(db, "add", args='{"a": 41}')
    result = procq("--app", APP, "jobs", "list", db_url=db_url)
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "Status" in line)
    for column in ("ID", "Queue", "Task", "Tries", "Created (UTC)", "Args"):
        assert column in header
    row = next(line for line in result.stdout.splitlines() if line.startswith(f"{job} "))
    assert "add" in row and "todo" in row and '{"a":41}' in row


def test_show_prints_arguments_timings_and_the_last_error(db_url: str, db: Conn) -> None:
    job = insert_job(
        db,
        "fail",
        args='{"message": "kaput"}',
        status="failed",
        attempts=2,
        started_at="2030-01-01T00:00:00Z",
        finished_at="2030-01-01T00:00:01.5Z",
        last_error="Traceback...\nValueError: kaput",
    )
    table = procq("jobs", "show", str(job), db_url=db_url)
    assert table.returncode == 0, table.stderr
    for text in (
        '{"message": "kaput"}',
        "failed",
        "1.500 s",
        "2030-01-01 00:00:01",
        "ValueError: kaput",
        "last error",
    ):
        assert text in table.stdout, text
    data = json.loads(procq("jobs", "show", str(job), "--json", db_url=db_url).stdout)
    assert data["attempts"] == 2 and data["args"] == {"message": "kaput"}
    assert data["finished_at"].startswith("2030-01-01T00:00:01.5")


def test_show_of_a_missing_job_is_one_line(db_url: str) -> None:
    result = procq("jobs", "show", "999999", db_url=db_url)
    assert result.returncode == 1
    assert "no job with id 999999" in one_line_error(result)


def test_retry_puts_a_failed_job_back_and_refuses_a_succeeded_one(db_url: str, db: Conn) -> None:
    failed = insert_job(db, status="failed", finished_at="now()")
    done = insert_job(db, status="succeeded", finished_at="now()")
    result = procq("jobs", "retry", str(failed), db_url=db_url)
    assert result.returncode == 0, result.stderr
    assert status_of(db, failed) == "todo"
    refused = procq("jobs", "retry", str(done), db_url=db_url)
    assert refused.returncode == 1
    assert f"job {done} is succeeded" in one_line_error(refused)
    assert status_of(db, done) == "succeeded"


def test_cancel_a_waiting_job_and_refuse_a_finished_one(db_url: str, db: Conn) -> None:
    waiting = insert_job(db)
    done = insert_job(db, status="succeeded", finished_at="now()")
    result = procq("jobs", "cancel", str(waiting), db_url=db_url)
    assert result.returncode == 0 and f"job {waiting} cancelled" in result.stdout
    assert status_of(db, waiting) == "cancelled"
    refused = procq("jobs", "cancel", str(done), "--abort", db_url=db_url)
    assert refused.returncode == 1
    assert "only waiting jobs can be cancelled" in one_line_error(refused)


def test_cancel_abort_stops_a_running_job(db_url: str, db: Conn) -> None:
    job = insert_job(db, "wait_for_abort", args='{"seconds": 20}')
    worker = start_procq("--app", APP, "worker", "--one-shot", db_url=db_url)
    try:
        deadline = time.monotonic() + 20
        while status_of(db, job) != "doing":
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.05)
        plain = procq("jobs", "cancel", str(job), db_url=db_url)
        assert plain.returncode == 1
        assert "pass --abort" in one_line_error(plain)
        aborted = procq("jobs", "cancel", str(job), "--abort", db_url=db_url)
        assert aborted.returncode == 0, aborted.stderr
        assert "asked to abort" in aborted.stdout
        worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert status_of(db, job) == "aborted"


def test_queues_counts_jobs_per_queue_and_status(db_url: str, db: Conn) -> None:
    insert_job(db, queue="a")
    insert_job(db, queue="a", created_at="2000-01-01T00:00:00Z")
    insert_job(db, queue="a", status="failed", finished_at="now()")
    insert_job(db, queue="b", status="succeeded", finished_at="now()")
    result = procq("jobs", "queues", "--json", db_url=db_url)
    assert result.returncode == 0, result.stderr
    stats = {q["queue"]: q for q in json.loads(result.stdout)}
    assert (stats["a"]["todo"], stats["a"]["failed"], stats["a"]["succeeded"]) == (2, 1, 0)
    assert stats["a"]["oldest_waiting_age"] > 20 * 365 * 86400
    assert (stats["b"]["succeeded"], stats["b"]["oldest_waiting_age"]) == (1, None)
    table = procq("jobs", "queues", db_url=db_url)
    row = next(line for line in table.stdout.splitlines() if line.startswith("a "))
    assert row.split()[:5] == ["a", "2", "0", "0", "1"]  # queue, todo, doing, succeeded, failed


def test_prune_deletes_only_old_finished_jobs(db_url: str, db: Conn) -> None:
    old = "now() - interval '3 days'"
    old_done = insert_job(db, status="succeeded")
    old_failed = insert_job(db, status="failed")
    db.execute(f"UPDATE procq_jobs SET finished_at = {old}")
    recent = insert_job(db, status="succeeded", finished_at="now()")
    waiting = insert_job(db, created_at="2000-01-01T00:00:00Z")
    only_failed = procq("jobs", "prune", "--older-than", "24", "--status", "failed", db_url=db_url)
    assert only_failed.returncode == 0, only_failed.stderr
    assert "deleted 1 failed job(s)" in only_failed.stdout
    result = procq("jobs", "prune", "--older-than", "24", db_url=db_url)
    assert "deleted 1 job(s) finished more than 24 h ago" in result.stdout
    left = [r["id"] for r in db.execute("SELECT id FROM procq_jobs ORDER BY id").fetchall()]
    assert left == [recent, waiting]
    assert old_done not in left and old_failed not in left


def test_prune_requires_older_than(db_url: str) -> None:
    result = procq("jobs", "prune", db_url=db_url)
    assert result.returncode == 2
    assert "--older-than" in result.stderr
