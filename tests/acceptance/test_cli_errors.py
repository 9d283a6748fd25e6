"""Errors print one clear line (a traceback only with -v) and exit non-zero; plus the
`demo` command is registered."""

from __future__ import annotations

import psycopg
from cli_support import one_line_error, procq


def test_app_module_that_does_not_exist(db_url: str) -> None:
    result = procq("--app", "no_such_module:app", "jobs", "list", db_url=db_url)
    assert result.returncode == 1
    line = one_line_error(result)
    assert "cannot import the app 'no_such_module:app'" in line and "PYTHONPATH" in line


def test_app_attribute_missing_or_not_an_app(db_url: str) -> None:
    missing = procq("--app", "cli_app.nothing_here", "jobs", "list", db_url=db_url)
    assert missing.returncode == 1
    assert "has no attribute 'nothing_here'" in one_line_error(missing)
    wrong = procq("--app", "cli_app:not_an_app", "jobs", "list", db_url=db_url)
    assert wrong.returncode == 1
    assert "is of type int, not a procq_sqla.App" in one_line_error(wrong)


def test_app_from_procq_app_variable_with_dotted_path(db_url: str) -> None:
    result = procq("jobs", "list", "--json", db_url=db_url, env={"PROCQ_APP": "cli_app.app"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_verbose_shows_the_traceback(empty_db_url: str) -> None:
    quiet = procq("--app", "cli_app:app", "jobs", "list", db_url=empty_db_url)
    assert quiet.returncode == 1
    assert "procq migrate" in one_line_error(quiet)
    loud = procq("-v", "--app", "cli_app:app", "jobs", "list", db_url=empty_db_url)
    assert loud.returncode == 1
    assert "Traceback" in loud.stderr and "SchemaMissing" in loud.stderr


def test_json_log_format_is_validated(db_url: str) -> None:
    result = procq("--log-format", "xml", "jobs", "list", db_url=db_url)
    assert result.returncode == 2
    assert "'xml' is not one of 'text', 'json'" in result.stderr


def test_demo_is_registered_and_needs_no_app(db_url: str) -> None:
    result = procq("demo", "--help", db_url=db_url)
    assert result.returncode == 0
    assert "PROCQ_DATABASE_URL" in result.stdout


def test_demo_runs_on_a_database_it_migrates_itself(empty_db_url: str) -> None:
    result = procq("demo", "--database-url", empty_db_url, db_url="postgresql://x@127.0.0.1:1/x")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout
    with psycopg.connect(empty_db_url) as conn:
        row = conn.execute("SELECT count(*), min(status), max(status) FROM procq_jobs").fetchone()
    assert row == (7, "succeeded", "succeeded")


def test_no_database_named_says_how_to_name_one() -> None:
    result = procq("jobs", "list", db_url="")
    assert result.returncode == 1
    line = one_line_error(result)
    assert "no database named" in line and "--database-url" in line and "--app" in line
