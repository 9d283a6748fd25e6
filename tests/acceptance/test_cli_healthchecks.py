"""`procq healthchecks`: database, schema revision, live workers, oldest waiting job;
exit 1 when something is wrong, and never a password in the output."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from cli_support import APP, procq

from procq_sqla.database import conninfo_kwargs

Conn = psycopg.Connection[dict[str, Any]]


def lines(text: str) -> dict[str, str]:
    """{check name: whole line} of the text output."""
    return {line.split()[1]: line for line in text.splitlines() if line.strip()}


def test_healthy_database_passes_every_check(db_url: str) -> None:
    result = procq("--app", APP, "healthchecks", db_url=db_url)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = lines(result.stdout)
    assert set(checks) == {"database", "schema", "workers", "jobs"}
    assert all(line.startswith("OK") for line in checks.values())
    assert "PostgreSQL" in checks["database"] and "at head procq_0003" in checks["schema"]
    assert "no job waiting" in checks["jobs"]


def test_missing_schema_fails_and_says_to_migrate(empty_db_url: str) -> None:
    result = procq("healthchecks", db_url=empty_db_url)
    assert result.returncode == 1
    schema = lines(result.stdout)["schema"]
    assert schema.startswith("FAIL") and "procq migrate" in schema


def test_schema_not_at_head_names_the_missing_revision(db_url: str, db: Conn) -> None:
    db.execute("DELETE FROM procq_alembic_version")
    result = procq("healthchecks", "--json", db_url=db_url)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["checks"]["schema"]["ok"] is False
    assert "missing procq_0001" in report["checks"]["schema"]["detail"]
    assert report["report"]["missing_revisions"] == ["procq_0001", "procq_0002", "procq_0003"]
    assert report["report"]["workers_alive"] == 0


def test_worker_and_waiting_thresholds(db_url: str, db: Conn) -> None:
    db.execute("INSERT INTO procq_workers (name) VALUES ('alive')")
    db.execute(
        "INSERT INTO procq_workers (name, last_heartbeat) VALUES ('gone', now() - interval '1 h')"
    )
    db.execute(
        "INSERT INTO procq_jobs (queue, task_name, created_at) "
        "VALUES ('default', 'add', now() - interval '10 minutes')"
    )
    relaxed = procq("healthchecks", "--min-workers", "1", db_url=db_url)
    assert relaxed.returncode == 0, relaxed.stdout
    assert "1 alive (heartbeat within 30 s), 1 stalled" in lines(relaxed.stdout)["workers"]
    assert "oldest runnable job waiting 6" in lines(relaxed.stdout)["jobs"]
    strict = procq("healthchecks", "--min-workers", "2", "--max-waiting-age", "60", db_url=db_url)
    assert strict.returncode == 1
    checks = lines(strict.stdout)
    assert checks["workers"].startswith("FAIL") and "at least 2 wanted" in checks["workers"]
    assert checks["jobs"].startswith("FAIL") and "(limit 60 s)" in checks["jobs"]


def test_unreachable_database_fails_without_printing_the_password(db_url: str) -> None:
    url = "postgresql://procq:s3cr3t-pw@127.0.0.1:1/nowhere"
    result = procq("healthchecks", db_url=url)
    assert result.returncode == 1
    database = lines(result.stdout)["database"]
    assert database.startswith("FAIL") and "cannot connect" in database
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    assert "procq:***@127.0.0.1" in database


def test_password_in_a_reachable_url_is_masked(db_url: str, db: Conn) -> None:
    db.execute("CREATE ROLE checker LOGIN PASSWORD 'hunter2-pw' SUPERUSER")
    params = conninfo_kwargs(db_url)
    host = params.get("host", "")
    url = f"postgresql://checker:hunter2-pw@/{params['dbname']}?host={host}"
    result = procq("healthchecks", "-v", db_url=url)
    assert "hunter2-pw" not in result.stdout + result.stderr
