"""Connection limits: with the pool exhausted, or the server refusing new connections
(the role's CONNECTION LIMIT used up), deferring waits up to the configured `timeout`
and then fails with a clear ConnectorError, writing nothing; a worker that loses every
connection slows down, logs, and finishes its jobs once connections are allowed again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from polling import count_jobs
from psycopg import sql

from procq_sqla import (
    AiopgConnector,
    App,
    ConnectorError,
    Psycopg2Connector,
    PsycopgConnector,
    SyncPsycopgConnector,
)
from procq_sqla.contrib.sqlalchemy import SQLAlchemyPsycopg2Connector
from procq_sqla.privileges import grant_statements
from procq_sqla.worker import Worker

TIMEOUT = 1.0


# -- the pool exhausted ----------------------------------------------------------------------

SYNC_ONE_CONNECTION: dict[str, Callable[[str], Any]] = {
    "sync_psycopg": lambda url: SyncPsycopgConnector(
        conninfo=url, min_size=1, max_size=1, timeout=TIMEOUT
    ),
    "psycopg2": lambda url: Psycopg2Connector(dsn=url, minconn=1, maxconn=1, timeout=TIMEOUT),
    "sqlalchemy": lambda url: SQLAlchemyPsycopg2Connector(
        dsn=url, pool_size=1, max_overflow=0, pool_timeout=TIMEOUT
    ),
}
ASYNC_ONE_CONNECTION: dict[str, Callable[[str], Any]] = {
    "psycopg": lambda url: PsycopgConnector(conninfo=url, min_size=1, max_size=1, timeout=TIMEOUT),
    "aiopg": lambda url: AiopgConnector(dsn=url, minsize=1, maxsize=1, timeout=TIMEOUT),
}


@contextlib.contextmanager
def blocked_defer_holds_the_only_connection(
    db: Any, db_url: str, defer: Callable[[], Any]
) -> Iterator[None]:
    """Lock the jobs table and start a defer in a thread: it takes the pool's only
    connection and waits on the lock until the block ends."""
    db.execute("BEGIN")
    db.execute("SET LOCAL statement_timeout = '20s'")  # a bug here fails, never hangs
    db.execute("LOCK TABLE procq_jobs IN ACCESS EXCLUSIVE MODE")
    holder = threading.Thread(target=defer, daemon=True)
    holder.start()
    try:  # pg_stat_activity is a snapshot per transaction: watch from another connection
        with psycopg.connect(db_url, autocommit=True) as watcher:
            deadline = time.monotonic() + 5
            while not watcher.execute(
                "SELECT count(*) > 0 FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND query LIKE '%procq_jobs%'"
            ).fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline, "the first defer never reached the lock"
                time.sleep(0.02)
        yield
    finally:
        db.execute("COMMIT")
        holder.join(10)


@contextlib.contextmanager
def holding_the_only_connection(kind: str, app: App, db: Any, db_url: str) -> Iterator[None]:
    """Someone else has the pool's only connection for the time of the block."""
    connector: Any = app.connector
    if kind == "sync_psycopg":
        with connector.pool.connection():
            yield
    elif kind == "sqlalchemy":
        with connector.engine.connect():
            yield
    else:  # psycopg2: a defer blocked on a table lock holds it (its pool never waits)
        with blocked_defer_holds_the_only_connection(
            db, db_url, lambda: app.get_task("t").defer(n=1)
        ):
            yield


@pytest.mark.parametrize("kind", sorted(SYNC_ONE_CONNECTION))
def test_defer_waits_for_the_pool_timeout_then_fails_clearly(
    kind: str, db_url: str, db: Any
) -> None:
    app = App(connector=SYNC_ONE_CONNECTION[kind](db_url))

    @app.task(name="t")
    def t(n: int) -> None: ...

    with app.open():
        with holding_the_only_connection(kind, app, db, db_url):
            started = time.monotonic()
            with pytest.raises(ConnectorError) as raised:
                t.defer(n=2)
            waited = time.monotonic() - started
        t.defer(n=3)  # the connection is back: deferring works again
    assert TIMEOUT * 0.9 <= waited < TIMEOUT + 3
    message = str(raised.value)
    assert "available" in message and "\n" not in message, message
    args = db.execute("SELECT args FROM procq_jobs ORDER BY id").fetchall()
    assert [a["args"]["n"] for a in args] == ([1, 3] if kind == "psycopg2" else [3])


@pytest.mark.parametrize("kind", sorted(ASYNC_ONE_CONNECTION))
async def test_defer_async_waits_for_the_pool_timeout_then_fails_clearly(
    kind: str, db_url: str, db: Any
) -> None:
    connector = ASYNC_ONE_CONNECTION[kind](db_url)
    app = App(connector=connector)

    @app.task(name="t")
    async def t(n: int) -> None: ...

    async with app.open_async():
        hold = connector.pool.connection() if kind == "psycopg" else connector.pool.acquire()
        async with hold:
            started = time.monotonic()
            with pytest.raises(ConnectorError) as raised:
                await t.defer_async(n=2)
            waited = time.monotonic() - started
        await t.defer_async(n=3)
    assert TIMEOUT * 0.9 <= waited < TIMEOUT + 3
    message = str(raised.value)
    assert "available" in message and "\n" not in message, message
    assert [r["args"] for r in db.execute("SELECT args FROM procq_jobs").fetchall()] == [{"n": 3}]


# -- the server refusing connections ---------------------------------------------------------


@pytest.fixture
def limited_role(db: Any, db_url: str, server_url: str) -> Iterator[str]:
    """A login role with the worker GRANTs whose CONNECTION LIMIT the test moves."""
    role = f"procq_limited_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    for statement in grant_statements(role, "worker"):
        db.execute(statement)
    yield role
    db.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s",
        (role,),
    )
    db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def set_limit(db: Any, role: str, limit: int) -> None:
    db.execute(
        sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
            sql.Identifier(role), sql.Literal(limit)
        )
    )


def cut_off(db: Any, role: str) -> None:
    """No new connection for the role, and its current ones closed."""
    set_limit(db, role, 0)
    db.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s",
        (role,),
    )


def test_defer_fails_after_the_timeout_when_the_server_refuses_connections(
    db_url: str, db: Any, limited_role: str
) -> None:
    app = App(
        connector=SyncPsycopgConnector(
            conninfo=db_url, kwargs={"user": limited_role}, timeout=TIMEOUT
        )
    )

    @app.task(name="t")
    def t() -> None: ...

    with app.open():
        t.defer()
        cut_off(db, limited_role)
        started = time.monotonic()
        with pytest.raises(ConnectorError) as raised:
            t.defer()
        waited = time.monotonic() - started
        set_limit(db, limited_role, -1)
        deadline = time.monotonic() + 15
        while True:  # allowed again: works as soon as the pool's reconnect backoff retries
            try:
                t.defer()
                break
            except ConnectorError:
                assert time.monotonic() < deadline, "the pool never reconnected"
    assert TIMEOUT * 0.9 <= waited < TIMEOUT + 3
    assert "available" in str(raised.value)
    assert count_jobs(db) == 2


async def test_worker_slows_down_and_finishes_when_connections_come_back(
    db_url: str, db: Any, limited_role: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="procq_sqla")
    set_limit(db, limited_role, 3)  # the pool (max 2) and the listener
    app = App(
        connector=PsycopgConnector(
            conninfo=db_url, kwargs={"user": limited_role}, max_size=2, timeout=TIMEOUT
        )
    )

    @app.task(name="work")
    async def work(n: int) -> None:
        await asyncio.sleep(0.02)

    jobs = 60
    deferrer = App(connector=SyncPsycopgConnector(conninfo=db_url))  # the owner defers
    deferrer.task(name="work")(lambda n: None)
    with deferrer.open():
        deferrer.get_task("work").batch_defer(*({"n": n} for n in range(jobs)))
    done = "SELECT count(*) AS n FROM procq_jobs WHERE status = 'succeeded'"
    async with app.open_async():
        worker = Worker(
            app,
            app.async_connector(),
            concurrency=4,
            install_signal_handlers=False,
            fetch_job_polling_interval=0.2,
            heartbeat_interval=0.5,
            stalled_worker_timeout=60,
        )
        running = asyncio.create_task(worker.run())
        await wait_until(lambda: db.execute(done).fetchone()["n"] >= 5)
        cut_off(db, limited_role)
        await asyncio.sleep(0.5)
        during = db.execute(done).fetchone()["n"]
        await asyncio.sleep(4)
        assert db.execute(done).fetchone()["n"] == during  # nothing ran without connections
        assert not running.done(), "the worker died"
        set_limit(db, limited_role, 3)
        await wait_until(lambda: db.execute(done).fetchone()["n"] == jobs, timeout=40)
        worker.stop()
        await asyncio.wait_for(running, 15)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    refused = [w for w in warnings if "cannot fetch jobs" in w]
    assert refused, warnings
    assert len(refused) < 15  # backing off, not spinning: 0.5 s, 1 s, 2 s, ... between tries
    assert any("available" in w or "too many connections" in w for w in warnings), warnings
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    statuses = db.execute("SELECT DISTINCT status FROM procq_jobs").fetchall()
    assert [r["status"] for r in statuses] == ["succeeded"]


async def wait_until(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
