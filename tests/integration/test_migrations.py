"""Alembic owns the schema: upgrade, downgrade and upgrade again leave the same schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from procq_sqla import migrations
from procq_sqla.database import sqlalchemy_url

ROOT = Path(__file__).resolve().parents[2]

SCHEMA_QUERY = """
SELECT 'relation' AS kind, c.relname AS name, c.relkind::text AS detail
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public'
UNION ALL
SELECT 'column', table_name || '.' || column_name,
       data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '')
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'trigger', tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
UNION ALL
SELECT 'function', p.proname, pg_get_function_identity_arguments(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
UNION ALL
SELECT 'constraint', conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE connamespace = 'public'::regnamespace
ORDER BY 1, 2, 3
"""


def schema(url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        rows: list[dict[str, Any]] = conn.execute(SCHEMA_QUERY).fetchall()
    return [(r["kind"], r["name"], r["detail"]) for r in rows]


def our_objects(url: str) -> list[tuple[str, str, str]]:
    return [
        row
        for row in schema(url)
        if row[1] != "procq_alembic_version" and not row[1].startswith("procq_alembic_version")
    ]


def test_upgrade_creates_the_tables_and_records_its_own_version(empty_db_url: str) -> None:
    migrations.upgrade(sqlalchemy_url(empty_db_url))

    names = {name for kind, name, _ in schema(empty_db_url) if kind == "relation"}
    assert {"procq_jobs", "procq_workers", "procq_periodic_defers"} <= names
    assert "procq_alembic_version" in names
    assert "alembic_version" not in names  # never the application's version table
    with psycopg.connect(empty_db_url) as conn:
        version = conn.execute("SELECT version_num FROM procq_alembic_version").fetchone()
    assert version == (migrations.head_revision(),)


def test_upgrade_downgrade_upgrade_leaves_the_same_schema(empty_db_url: str) -> None:
    url = sqlalchemy_url(empty_db_url)
    migrations.upgrade(url)
    first = schema(empty_db_url)

    migrations.downgrade(url)
    assert our_objects(empty_db_url) == []  # every object the revisions made is gone

    migrations.upgrade(url)
    assert schema(empty_db_url) == first


def test_alembic_command_line_from_a_clone_uses_procq_database_url(empty_db_url: str) -> None:
    env = {**os.environ, "PROCQ_DATABASE_URL": empty_db_url}
    alembic = [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini")]

    up = subprocess.run([*alembic, "upgrade", "head"], env=env, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    assert "procq_jobs" in {n for k, n, _ in schema(empty_db_url) if k == "relation"}

    down = subprocess.run([*alembic, "downgrade", "base"], env=env, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert our_objects(empty_db_url) == []


def test_upgrade_sql_prints_the_ddl_without_a_database() -> None:
    ddl = migrations.upgrade_sql()
    assert "CREATE TABLE procq_jobs" in ddl
    assert "CREATE TRIGGER procq_jobs_notify_insert" in ddl
    assert "procq_alembic_version" in ddl


def test_missing_revisions_names_what_is_not_applied(empty_db_url: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(sqlalchemy_url(empty_db_url))
    try:
        with engine.connect() as conn:
            assert migrations.missing_revisions(conn) == [
                "procq_0003",
                "procq_0002",
                "procq_0001",
            ]  # head first
        migrations.upgrade(engine)
        with engine.connect() as conn:
            assert migrations.missing_revisions(conn) == []
    finally:
        engine.dispose()
