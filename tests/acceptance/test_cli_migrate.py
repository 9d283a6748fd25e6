"""`procq migrate`: needs no app; upgrades, checks (`--check`), prints DDL (`--sql`)."""

from __future__ import annotations

from typing import Any

import psycopg
from cli_support import one_line_error, procq

Conn = psycopg.Connection[dict[str, Any]]


def test_migrate_creates_the_schema_and_check_then_passes(empty_db_url: str) -> None:
    before = procq("migrate", "--check", db_url=empty_db_url)
    assert before.returncode == 1
    assert "missing procq_0001" in one_line_error(before)
    result = procq("migrate", db_url=empty_db_url)
    assert result.returncode == 0, result.stderr
    assert "is at head" in result.stdout
    with psycopg.connect(empty_db_url) as conn:
        row = conn.execute("SELECT version_num FROM procq_alembic_version").fetchone()
        assert row == ("procq_0003",)
        assert conn.execute("SELECT to_regclass('procq_jobs')::text").fetchone() == ("procq_jobs",)
    after = procq("migrate", "--check", db_url=empty_db_url)
    assert after.returncode == 0, after.stderr
    again = procq("migrate", "--database-url", empty_db_url, db_url="postgresql://x@127.0.0.1:1/x")
    assert again.returncode == 0, again.stderr


def test_migrate_sql_prints_ddl_without_a_database() -> None:
    result = procq("migrate", "--sql", db_url="postgresql://nobody:pw@127.0.0.1:1/none")
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE procq_jobs" in result.stdout
    assert "procq_alembic_version" in result.stdout
    assert "CREATE TRIGGER" in result.stdout or "CREATE OR REPLACE FUNCTION" in result.stdout


def test_migrate_to_an_explicit_revision(empty_db_url: str) -> None:
    result = procq("migrate", "--revision", "procq_0001", db_url=empty_db_url)
    assert result.returncode == 0, result.stderr
    assert "is at procq_0001" in result.stdout


def test_migrate_on_an_unreachable_server_is_one_masked_line() -> None:
    result = procq("migrate", db_url="postgresql://procq:pa55word@127.0.0.1:1/none")
    assert result.returncode == 1
    line = one_line_error(result)
    assert "pa55word" not in result.stderr and "127.0.0.1" in line
