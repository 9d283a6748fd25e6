"""Least privilege: the schema is migrated by its owner; a worker role and a web role hold
only the GRANTs `procq grants` prints, and that is enough for everything they do (defer,
manage, claim and finish, rescue, periodic ticks), while they cannot drop, alter or
truncate procq's tables."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from procq_sqla import App, ConnectorError, PsycopgConnector, SyncPsycopgConnector
from procq_sqla.manager import COPY_MIN_JOBS
from procq_sqla.privileges import SEQUENCES, grant_script, grant_statements
from procq_sqla.worker import Worker


@pytest.fixture
def make_role(db: Any, server_url: str) -> Iterator[Any]:
    """Create login roles with no privileges of their own; dropped after the test."""
    created: list[str] = []

    def make(prefix: str) -> str:
        role = f"{prefix}_{uuid.uuid4().hex[:8]}"
        db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        created.append(role)
        return role

    yield make
    for role in created:
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def grant(db: Any, role: str, kind: str) -> None:
    """Run exactly what `procq grants` prints, as the owner."""
    printed = subprocess.run(
        [sys.executable, "-m", "procq_sqla", "grants", "--role", role, "--kind", kind],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed == grant_script(role, kind)
    for statement in grant_statements(role, kind):
        db.execute(statement)


def privileges_of(db: Any, role: str) -> set[tuple[str, str]]:
    rows = db.execute(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
        " WHERE grantee = %s",
        (role,),
    ).fetchall()
    return {(r["table_name"], r["privilege_type"]) for r in rows}


@contextlib.asynccontextmanager
async def running_worker(app: App, **options: Any) -> AsyncIterator[Worker]:
    worker = Worker(
        app,
        app.async_connector(),
        install_signal_handlers=False,
        fetch_job_polling_interval=0.2,
        **options,
    )
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)


async def wait_until(db: Any, query: str, expected: Any, *params: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = next(iter(db.execute(query, params).fetchone().values()))
        if got == expected or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


def test_the_documented_sequences_are_the_identity_sequences(db: Any) -> None:
    names = {
        db.execute("SELECT pg_get_serial_sequence(%s, 'id') AS s", (table,)).fetchone()["s"]
        for table in ("procq_jobs", "procq_workers")
    }
    assert names == {f"public.{s}" for s in SEQUENCES["worker"]}


def test_a_role_without_the_grants_cannot_defer(db_url: str, db: Any, make_role: Any) -> None:
    role = make_role("procq_nothing")
    app = App(connector=SyncPsycopgConnector(conninfo=db_url, kwargs={"user": role}))

    @app.task(name="t")
    def t() -> None: ...

    with app.open(), pytest.raises(ConnectorError, match="permission denied"):
        t.defer()
    assert db.execute("SELECT count(*) AS n FROM procq_jobs").fetchone()["n"] == 0


def test_web_role_defers_and_manages_jobs_with_only_its_grants(
    db_url: str, db: Any, make_role: Any
) -> None:
    role = make_role("procq_web")
    grant(db, role, "web")
    assert privileges_of(db, role) == {
        ("procq_jobs", "SELECT"),
        ("procq_jobs", "INSERT"),
        ("procq_jobs", "UPDATE"),
        ("procq_workers", "SELECT"),
        ("procq_alembic_version", "SELECT"),
    }
    app = App(connector=SyncPsycopgConnector(conninfo=db_url, kwargs={"user": role}))

    @app.task(name="mail")
    def mail(to: str) -> None: ...

    with app.open():
        first = mail.defer(to="a@example.org")
        ids = mail.configure(queueing_lock="b").batch_defer({"to": "b"})
        copied = mail.batch_defer(*({"to": f"c{i}"} for i in range(COPY_MIN_JOBS)))  # by COPY
        manager = app.job_manager
        assert manager.get_job(first).args == {"to": "a@example.org"}
        assert manager.cancel(first) is True
        assert manager.retry(first) is True
        assert len(manager.list_jobs(task_name="mail", limit=5000)) == 2 + COPY_MIN_JOBS
        report = manager.health()
        assert report.schema_present and not report.missing_revisions
    rows = db.execute("SELECT id, status FROM procq_jobs ORDER BY id").fetchall()
    assert [(r["id"], r["status"]) for r in rows[:2]] == [(first, "todo"), (ids[0], "todo")]
    assert [r["id"] for r in rows[2:]] == copied


async def test_worker_role_runs_jobs_rescues_and_defers_periodic_ticks(
    db_url: str, db: Any, make_role: Any
) -> None:
    role = make_role("procq_worker")
    grant(db, role, "worker")
    app = App(connector=PsycopgConnector(conninfo=db_url, kwargs={"user": role}))
    ran: list[str] = []

    @app.task(name="work", retry=1)
    async def work(n: int) -> None:
        ran.append(f"work {n}")
        if n == 0:
            await app.get_task("work").defer_async(n=1)  # a task defers as the worker role

    @app.periodic(cron="* * * * * *", periodic_id="tick")
    @app.task(name="tick")
    async def tick(timestamp: int) -> None:
        ran.append("tick")

    # a dead worker (registered by the owner) left a job running
    dead = db.execute(
        "INSERT INTO procq_workers (name, last_heartbeat) "
        "VALUES ('gone', now() - interval '1 hour') RETURNING id"
    ).fetchone()["id"]
    orphan = db.execute(
        "INSERT INTO procq_jobs (task_name, args, status, attempts, worker_id, started_at) "
        "VALUES ('work', '{\"n\": 7}', 'doing', 1, %s, now()) RETURNING id",
        (dead,),
    ).fetchone()["id"]
    async with app.open_async():
        await work.defer_async(n=0)
        async with running_worker(
            app, heartbeat_interval=0.2, stalled_worker_timeout=1.0, delete_jobs="never"
        ):
            done = (
                "SELECT count(*) FROM procq_jobs WHERE task_name = 'work' AND status = 'succeeded'"
            )
            assert await wait_until(db, done, 3) == 3  # work 0, the work 0 deferred, the orphan
            periodic = "SELECT count(*) > 0 FROM procq_periodic_defers"
            assert await wait_until(db, periodic, True) is True
            ticked = "SELECT count(*) > 0 FROM procq_jobs WHERE task_name = 'tick'"
            assert await wait_until(db, ticked, True) is True
    status = db.execute("SELECT status FROM procq_jobs WHERE id = %s", (orphan,)).fetchone()
    assert status["status"] == "succeeded"
    assert {"work 0", "work 1", "work 7"} <= set(ran)
    gone = db.execute("SELECT count(*) AS n FROM procq_workers WHERE id = %s", (dead,)).fetchone()
    assert gone["n"] == 0


SCHEMA_CHANGES = (
    "DROP TABLE procq_jobs",
    "ALTER TABLE procq_jobs ADD COLUMN sneaky integer",
    "ALTER TABLE procq_workers RENAME TO w",
    "TRUNCATE procq_periodic_defers",
    "DROP FUNCTION procq_notify_new_jobs() CASCADE",
    "CREATE TRIGGER sneaky AFTER INSERT ON procq_jobs"
    " FOR EACH STATEMENT EXECUTE FUNCTION procq_notify_new_jobs()",
    "CREATE TABLE procq_extra (id integer)",
    "CREATE INDEX ON procq_jobs (queue)",
)


@pytest.mark.parametrize("kind", ["worker", "web"])
def test_granted_roles_cannot_change_the_schema(
    db_url: str, db: Any, make_role: Any, kind: str
) -> None:
    role = make_role(f"procq_{kind}")
    grant(db, role, kind)
    before = schema_shape(db)
    refused = []
    with psycopg.connect(db_url, user=role, autocommit=True) as conn:
        for statement in SCHEMA_CHANGES:
            try:
                conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege:
                refused.append(statement)
    assert refused == list(SCHEMA_CHANGES)
    assert schema_shape(db) == before


def schema_shape(db: Any) -> list[tuple[str, str]]:
    """Every relation, column, trigger and function of ours, to see that none changed."""
    rows = db.execute(
        "SELECT 'column' AS kind, table_name || '.' || column_name AS name"
        "  FROM information_schema.columns WHERE table_schema = 'public'"
        " UNION ALL SELECT 'relation', relname FROM pg_class"
        "  WHERE relnamespace = 'public'::regnamespace"
        " UNION ALL SELECT 'trigger', tgname FROM pg_trigger WHERE NOT tgisinternal"
        " UNION ALL SELECT 'function', proname FROM pg_proc"
        "  WHERE pronamespace = 'public'::regnamespace"
        " ORDER BY 1, 2"
    ).fetchall()
    assert len(rows) > 30
    return [(r["kind"], r["name"]) for r in rows]


def test_web_role_cannot_delete_jobs_or_touch_workers(db_url: str, db: Any, make_role: Any) -> None:
    role = make_role("procq_web")
    grant(db, role, "web")
    db.execute("INSERT INTO procq_jobs (task_name) VALUES ('t')")
    with psycopg.connect(db_url, user=role, autocommit=True) as conn:
        for statement in (
            "DELETE FROM procq_jobs",
            "INSERT INTO procq_workers (name) VALUES ('fake')",
            "DELETE FROM procq_workers",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert db.execute("SELECT count(*) AS n FROM procq_jobs").fetchone()["n"] == 1
