"""The I/O-free pieces: SQL loading, job builders, retry decisions, URL handling."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from procq_sqla.database import (
    conninfo_kwargs,
    mask_password,
    normalize_url,
    sqlalchemy_url,
    with_dbname,
)
from procq_sqla.exceptions import ConnectorError, InvalidOption, JobArgumentsError, SchemaMissing
from procq_sqla.jobs import (
    JobOptions,
    batch_defer_params,
    match_batch_ids,
    resolve_schedule,
    serialize_args,
)
from procq_sqla.retry import RetryStrategy, get_retry_strategy
from procq_sqla.sql import load_queries, parse_queries, queries


def test_every_query_loads_without_comments() -> None:
    loaded = load_queries()
    assert {"defer_job", "batch_defer_jobs", "claim_jobs_any_queue", "finish_jobs"} <= set(loaded)
    for name, text in loaded.items():
        assert text, name
        assert not any(line.lstrip().startswith("--") for line in text.splitlines()), name


def test_parse_queries_splits_named_blocks() -> None:
    text = "-- name: a --\n-- what a does\nSELECT 1\n\n-- name: b --\nSELECT 2\n"
    assert parse_queries(text) == {"a": "SELECT 1", "b": "SELECT 2"}


def test_unknown_query_name_fails_loudly() -> None:
    with pytest.raises(KeyError, match="no SQL query named 'nope'"):
        queries["nope"]


def test_serialize_args_names_the_bad_argument() -> None:
    with pytest.raises(JobArgumentsError, match="argument 'when'"):
        serialize_args({"ok": 1, "when": dt.date.today()}, json.dumps)
    assert json.loads(serialize_args({"a": [1, "é"]}, json.dumps)) == {"a": [1, "é"]}


def test_schedule_in_and_at_are_exclusive_and_at_must_be_aware() -> None:
    aware = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert resolve_schedule(aware, None) == aware
    with pytest.raises(InvalidOption, match="not both"):
        resolve_schedule(aware, {"seconds": 1})
    with pytest.raises(InvalidOption, match="timezone-aware"):
        resolve_schedule(dt.datetime(2030, 1, 1), None)
    soon = resolve_schedule(None, {"seconds": 30})
    assert soon is not None
    assert 29 < (soon - dt.datetime.now(dt.UTC)).total_seconds() <= 30


def test_batch_params_send_options_once_and_args_as_one_json_array() -> None:
    params = batch_defer_params("t", JobOptions(queue="q", priority=2), ['{"a":1}', '{"a":2}'])
    assert json.loads(params["args"]) == [{"a": 1}, {"a": 2}]
    assert (params["queue"], params["priority"], params["task_name"]) == ("q", 2, "t")
    assert params["queueing_locks"] == [None, None]


def test_match_batch_ids_marks_skipped_queueing_locks() -> None:
    rows = [{"id": 10, "queueing_lock": "x"}]
    assert match_batch_ids(["x", "x"], rows) == [10, None]
    assert match_batch_ids(
        [None, None], [{"id": 1, "queueing_lock": None}, {"id": 2, "queueing_lock": None}]
    ) == [1, 2]
    assert match_batch_ids(["x"], []) == [None]


def test_retry_strategy_counts_retries_and_waits() -> None:
    strategy = RetryStrategy(max_attempts=2, wait=1, linear_wait=2)
    error = ValueError("x")
    assert strategy.retry_delay(1, error) == 1
    assert strategy.retry_delay(2, error) == 3
    assert strategy.retry_delay(3, error) is None


def test_retry_exceptions_filter_and_exponential_cap() -> None:
    only_io = RetryStrategy(retry_exceptions=(OSError,), exponential_wait=2, max_wait=5)
    assert only_io.retry_delay(1, ValueError()) is None
    assert only_io.retry_delay(1, OSError()) == 2
    assert only_io.retry_delay(5, OSError()) == 5


def test_retry_shorthands() -> None:
    assert get_retry_strategy(False) is None
    assert get_retry_strategy(0) is None
    assert get_retry_strategy(3) == RetryStrategy(max_attempts=3)
    forever = get_retry_strategy(True)
    assert forever is not None and forever.max_attempts is None
    with pytest.raises(InvalidOption):
        get_retry_strategy(-1)


def test_mask_password_in_urls_and_conninfo() -> None:
    assert mask_password("postgresql://bob:hunter2@db/x") == "postgresql://bob:***@db/x"
    assert "hunter2" not in mask_password("host=db password=hunter2 user=bob")
    assert "hunter 2" not in mask_password("host=db password='hunter 2' user=bob")


def test_urls_convert_between_drivers() -> None:
    assert normalize_url("postgresql+psycopg2://u@h/d") == "postgresql://u@h/d"
    assert sqlalchemy_url("postgresql://u@h/d", "psycopg") == "postgresql+psycopg://u@h/d"
    assert with_dbname("postgresql://u@h:5/d?sslmode=require", "x") == (
        "postgresql://u@h:5/x?sslmode=require"
    )
    assert with_dbname("", "x") == "postgresql:///x"
    assert conninfo_kwargs("postgresql://u:p%40ss@h:5433/d?sslmode=require") == {
        "host": "h",
        "port": 5433,
        "user": "u",
        "password": "p@ss",
        "dbname": "d",
        "sslmode": "require",
    }


def test_not_a_postgres_url_is_refused_without_its_password() -> None:
    with pytest.raises(ConnectorError, match="not a PostgreSQL URL") as info:
        normalize_url("mysql://root:topsecret@db/x")
    assert "topsecret" not in str(info.value)


def test_exception_messages_are_one_line() -> None:
    assert "\n" not in str(SchemaMissing())
    assert str(SchemaMissing()).startswith("The procq_sqla tables are missing")


def test_job_from_row_takes_every_column_and_defaults_the_missing_ones() -> None:
    from procq_sqla.jobs import Job

    now = dt.datetime.now(dt.UTC)
    full = Job(7, "t", "q", {"a": 1}, "doing", 3, "l", "ql", now, 2, now, now, None, "e", 9, True)
    assert Job.from_row(full.as_dict()) == full
    partial = Job.from_row({"id": 8, "task_name": "u", "args": None, "extra_column": 1})
    assert partial == Job(8, "u")
    assert partial.args == {} and partial.queue == "default" and partial.attempts == 0
