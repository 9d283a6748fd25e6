"""`procq worker`: runs the app's jobs with every option from flags or PROCQ_WORKER_*,
logs structured events, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import psycopg
import pytest
from cli_support import APP, one_line_error, procq, start_procq

Conn = psycopg.Connection[dict[str, Any]]


def insert_job(db: Conn, task: str, args: dict[str, Any], queue: str = "default") -> int:
    row = db.execute(
        "INSERT INTO procq_jobs (queue, task_name, args) VALUES (%s, %s, %s::jsonb) RETURNING id",
        (queue, task, json.dumps(args)),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def status_of(db: Conn, job_id: int) -> str:
    row = db.execute("SELECT status FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row["status"])


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("claim_ahead", ["--claim-ahead", "--no-claim-ahead"])
def test_one_shot_worker_runs_every_waiting_job_and_exits_0(
    db_url: str, db: Conn, claim_ahead: str
) -> None:
    ids = [insert_job(db, "add", {"a": i, "b": 1}) for i in range(3)]
    slow = insert_job(db, "sleep", {"seconds": 0.01}, queue="slow")
    result = procq(
        "--app", APP, "worker", "--one-shot", "-c", "2", "--no-listen-notify",
        "--fetch-job-polling-interval", "0.2", "--abort-job-polling-interval", "1",
        "--shutdown-graceful-timeout", "5", "--delete-jobs", "never", claim_ahead,
        db_url=db_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [status_of(db, i) for i in [*ids, slow]] == ["succeeded"] * 4
    assert "stopped after 4 job(s)" in result.stderr


def test_worker_options_come_from_procq_worker_variables(db_url: str, db: Conn) -> None:
    default = insert_job(db, "add", {"a": 1, "b": 2})
    slow = insert_job(db, "sleep", {"seconds": 0.01}, queue="slow")
    env = {
        "PROCQ_APP": APP,
        "PROCQ_WORKER_WAIT": "false",
        "PROCQ_WORKER_QUEUES": "slow",
        "PROCQ_WORKER_NAME": "env-worker",
        "PROCQ_WORKER_DELETE_JOBS": "successful",
        "PROCQ_WORKER_CONCURRENCY": "3",
        "PROCQ_LOG_FORMAT": "json",
    }
    result = procq("worker", db_url=db_url, env=env)
    assert result.returncode == 0, result.stderr
    assert status_of(db, default) == "todo"  # not in the worker's queues
    assert db.execute("SELECT 1 FROM procq_jobs WHERE id = %s", (slow,)).fetchone() is None
    started = [e for e in json_lines(result.stderr) if e.get("event") == "worker_started"]
    assert started and started[0]["worker"] == "env-worker"
    assert "concurrency 3" in started[0]["message"]


def test_json_logs_carry_job_fields_as_top_level_keys(db_url: str, db: Conn) -> None:
    ok = insert_job(db, "add", {"a": 1, "b": 2})
    bad = insert_job(db, "fail", {"message": "kaput"})
    retried = insert_job(db, "always_fails", {})
    result = procq(
        "--app",
        APP,
        "--log-format",
        "json",
        "worker",
        "--one-shot",
        "--name",
        "w1",
        db_url=db_url,
    )
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stderr)  # every line is JSON
    by_event: dict[tuple[str, int], dict[str, Any]] = {
        (e["event"], e["job_id"]): e for e in events if "job_id" in e
    }
    success = by_event[("job_succeeded", ok)]
    assert success["task"] == "add" and success["queue"] == "default"
    assert success["attempt"] == 1 and success["worker"] == "w1"
    assert isinstance(success["duration"], float) and success["duration"] >= 0
    assert success["level"] == "info" and success["logger"] == "procq_sqla.worker"
    failure = by_event[("job_failed", bad)]
    assert failure["level"] == "error" and failure["error"] == "ValueError: kaput"
    retries = [e["attempt"] for e in events if e.get("event") == "job_retried"]
    assert retries == [1, 2]
    assert by_event[("job_failed", retried)]["attempt"] == 3
    assert status_of(db, retried) == "failed"


def test_worker_stops_gracefully_on_sigterm_and_is_seen_alive_meanwhile(
    db_url: str, db: Conn
) -> None:
    worker = start_procq(
        "--app",
        APP,
        "--log-format",
        "json",
        "worker",
        "--heartbeat-interval",
        "1",
        "--stalled-worker-timeout",
        "5",
        db_url=db_url,
    )
    try:
        deadline = time.monotonic() + 20
        while not db.execute("SELECT 1 FROM procq_workers").fetchone():
            assert time.monotonic() < deadline, "the worker never registered"
            assert worker.poll() is None, worker.communicate()
            time.sleep(0.05)
        job = insert_job(db, "add", {"a": 2, "b": 3})
        while status_of(db, job) != "succeeded":
            assert time.monotonic() < deadline, "the job never ran"
            time.sleep(0.05)
        health = procq("healthchecks", "--min-workers", "1", db_url=db_url)
        assert health.returncode == 0, health.stdout + health.stderr
        assert "1 alive" in health.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=20)
    assert worker.returncode == 0, stderr
    assert "worker_stopped" in stderr
    assert db.execute("SELECT count(*) AS n FROM procq_workers").fetchone() == {"n": 0}


def test_worker_needs_an_app(db_url: str) -> None:
    result = procq("worker", "--one-shot", db_url=db_url)
    assert result.returncode == 2
    assert "needs an app: pass --app" in result.stderr


def test_worker_option_out_of_range_is_a_usage_error(db_url: str) -> None:
    result = procq("--app", APP, "worker", "--concurrency", "0", db_url=db_url)
    assert result.returncode == 2
    assert "--concurrency" in result.stderr


def test_worker_on_a_database_without_schema_says_to_migrate(empty_db_url: str) -> None:
    result = procq("--app", APP, "worker", "--one-shot", db_url=empty_db_url)
    assert result.returncode == 1
    assert "procq migrate" in one_line_error(result)
