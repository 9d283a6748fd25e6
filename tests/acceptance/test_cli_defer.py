"""`procq defer TASK [JSON]`: writes the expected row, prints its id, and fails with a
clear line and a documented exit code on bad input."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
from cli_support import APP, one_line_error, procq

Conn = psycopg.Connection[dict[str, Any]]


def job_row(db: Conn, job_id: int) -> dict[str, Any]:
    row = db.execute("SELECT * FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row


def count_jobs(db: Conn) -> int:
    row = db.execute("SELECT count(*) AS n FROM procq_jobs").fetchone()
    assert row is not None
    return int(row["n"])


def test_defer_prints_the_id_of_the_row_it_wrote(db_url: str, db: Conn) -> None:
    result = procq(
        "--app", APP, "--log-format", "json", "defer", "add", '{"a": 1, "b": 2}', db_url=db_url
    )
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.strip())
    (logged,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert (logged["event"], logged["job_id"], logged["task"]) == ("job_deferred", job_id, "add")
    row = job_row(db, job_id)
    assert (row["task_name"], row["queue"], row["args"], row["status"]) == (
        "add",
        "default",
        {"a": 1, "b": 2},
        "todo",
    )


def test_defer_options_override_the_tasks_defaults(db_url: str, db: Conn) -> None:
    at = "2031-05-06T07:08:09+02:00"
    result = procq(
        "--app",
        APP,
        "defer",
        "send_email",
        '{"to": "a@example.org"}',
        "--queue",
        "urgent",
        "--priority",
        "7",
        "--lock",
        "user:1",
        "--queueing-lock",
        "mail:a",
        "--at",
        at,
        db_url=db_url,
    )
    assert result.returncode == 0, result.stderr
    row = job_row(db, int(result.stdout))
    assert row["queue"] == "urgent" and row["priority"] == 7
    assert row["lock"] == "user:1" and row["queueing_lock"] == "mail:a"
    assert row["scheduled_at"] == dt.datetime.fromisoformat(at)


def test_defer_in_seconds_schedules_relative_to_now(db_url: str, db: Conn) -> None:
    before = dt.datetime.now(dt.UTC)
    result = procq("--app", APP, "defer", "add", "--in", "120", db_url=db_url)
    assert result.returncode == 0, result.stderr
    delay = (job_row(db, int(result.stdout))["scheduled_at"] - before).total_seconds()
    assert 119 < delay < 135


def test_already_enqueued_exits_3_unless_ignored(db_url: str, db: Conn) -> None:
    first = procq("--app", APP, "defer", "send_email", '{"to": "x"}', db_url=db_url)
    assert first.returncode == 0, first.stderr
    second = procq("--app", APP, "defer", "send_email", '{"to": "y"}', db_url=db_url)
    assert second.returncode == 3
    assert "queueing lock 'mail' is already waiting" in one_line_error(second)
    third = procq(
        "--app",
        APP,
        "defer",
        "send_email",
        '{"to": "z"}',
        "--ignore-already-enqueued",
        db_url=db_url,
    )
    assert third.returncode == 0 and third.stdout == ""
    assert count_jobs(db) == 1


def test_unknown_task_suggests_close_names_and_writes_nothing(db_url: str, db: Conn) -> None:
    result = procq("--app", APP, "defer", "ad", "{}", db_url=db_url)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "unknown task 'ad'" in line and "'add'" in line and "--unknown" in line
    assert count_jobs(db) == 0


def test_unknown_flag_defers_a_task_the_app_does_not_know(db_url: str, db: Conn) -> None:
    result = procq(
        "--app",
        APP,
        "defer",
        "other.app.task",
        '{"x": 1}',
        "--unknown",
        "--queue",
        "elsewhere",
        db_url=db_url,
    )
    assert result.returncode == 0, result.stderr
    row = job_row(db, int(result.stdout))
    assert (row["task_name"], row["queue"], row["args"]) == (
        "other.app.task",
        "elsewhere",
        {"x": 1},
    )


def test_defer_without_app_needs_unknown(db_url: str, db: Conn) -> None:
    refused = procq("defer", "add", "{}", db_url=db_url)
    assert refused.returncode == 2
    assert "no --app given" in one_line_error(refused)
    accepted = procq("defer", "add", '{"a": 1}', "--unknown", db_url=db_url)
    assert accepted.returncode == 0, accepted.stderr
    assert job_row(db, int(accepted.stdout))["args"] == {"a": 1}


def test_json_that_is_not_an_object_is_one_clear_line(db_url: str, db: Conn) -> None:
    for text, expected in (("[1, 2]", "must be a JSON object"), ("{oops", "not valid JSON")):
        result = procq("--app", APP, "defer", "add", text, db_url=db_url)
        assert result.returncode == 2, text
        assert expected in one_line_error(result)
    assert count_jobs(db) == 0


def test_naive_at_and_at_with_in_are_usage_errors(db_url: str, db: Conn) -> None:
    naive = procq("--app", APP, "defer", "add", "--at", "2031-01-01T00:00:00", db_url=db_url)
    assert naive.returncode == 2
    assert "has no timezone" in one_line_error(naive)
    both = procq(
        "--app", APP, "defer", "add", "--at", "2031-01-01T00:00:00Z", "--in", "5", db_url=db_url
    )
    assert both.returncode == 2
    assert "not both" in one_line_error(both)
    assert count_jobs(db) == 0


def test_invalid_option_value_is_one_line(db_url: str, db: Conn) -> None:
    result = procq("--app", APP, "defer", "add", "--queue", "", db_url=db_url)
    assert result.returncode == 2
    assert "queue must be a non-empty string" in one_line_error(result)
    assert count_jobs(db) == 0
