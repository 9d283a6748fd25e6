"""Each sync connector keeps the connection of its last statement for the next one, and
gives it back to its pool when idle, at close, when the server dropped it, and never
shares it with a forked child."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg_pool
import pytest
from polling import count_jobs, eventually
from sqlalchemy import create_engine, event

from procq_sqla import AiopgConnector, App, PsycopgConnector, SyncPsycopgConnector
from procq_sqla.connectors import spare
from procq_sqla.connectors.psycopg2 import Psycopg2Connector
from procq_sqla.contrib.sqlalchemy import SQLAlchemyPsycopg2Connector
from procq_sqla.database import sqlalchemy_url


@dataclass
class Pooled:
    """An open app on one connector, and two views of its pool."""

    app: App
    checkouts: Callable[[], int]  # connections handed out by the pool so far
    out: Callable[[], int]  # connections out of the pool now


def _sync_psycopg(url: str) -> Iterator[Pooled]:
    app = App(connector=SyncPsycopgConnector(conninfo=url, min_size=1, max_size=4)).open()
    pool = app.sync_connector().pool  # type: ignore[attr-defined]

    def out() -> int:
        stats = pool.get_stats()
        return int(stats["pool_size"] - stats["pool_available"])

    with app:
        yield Pooled(app, lambda: int(pool.get_stats().get("requests_num", 0)), out)


def _psycopg2(url: str) -> Iterator[Pooled]:
    app = App(connector=Psycopg2Connector(dsn=url, minconn=1, maxconn=4)).open()
    pool = app.sync_connector().pool  # type: ignore[attr-defined]
    counted = [0]
    getconn = pool.getconn

    def counting_getconn(*args: Any, **kwargs: Any) -> Any:
        counted[0] += 1
        return getconn(*args, **kwargs)

    pool.getconn = counting_getconn
    with app:
        yield Pooled(app, lambda: counted[0], lambda: len(pool._used))


def _sqlalchemy(url: str) -> Iterator[Pooled]:
    engine = create_engine(sqlalchemy_url(url, "psycopg2"), pool_size=4, max_overflow=0)
    counted = [0]

    @event.listens_for(engine, "checkout")
    def on_checkout(*_: Any) -> None:
        counted[0] += 1

    app = App(connector=SQLAlchemyPsycopg2Connector()).open(engine)
    try:
        with app:
            yield Pooled(app, lambda: counted[0], lambda: int(engine.pool.checkedout()))  # type: ignore[attr-defined]
    finally:
        engine.dispose()


OPENERS = {"sync_psycopg": _sync_psycopg, "psycopg2": _psycopg2, "sqlalchemy": _sqlalchemy}


@pytest.fixture(params=sorted(OPENERS))
def pooled(request: pytest.FixtureRequest, db_url: str) -> Iterator[Pooled]:
    yield from OPENERS[request.param](db_url)


def _noop(app: App) -> Any:
    @app.task(name="noop")
    def noop(i: int) -> None:
        return None

    return noop


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_back_to_back_defers_reuse_one_connection(pooled: Pooled, db: Any) -> None:
    noop = _noop(pooled.app)
    noop.defer(i=0)
    before = pooled.checkouts()
    ids = [noop.defer(i=i) for i in range(1, 101)]
    assert pooled.checkouts() - before <= 1
    assert len(set(ids)) == 100
    assert count_jobs(db, "todo") == 101


def test_an_idle_spare_goes_back_to_the_pool(pooled: Pooled) -> None:
    noop = _noop(pooled.app)
    for i in range(5):
        noop.defer(i=i)
    assert pooled.out() == 1
    assert _wait_for(lambda: pooled.out() == 0, timeout=spare.IDLE_SECONDS * 6)


def test_close_gives_the_spare_back_at_once(db_url: str) -> None:
    engine = create_engine(sqlalchemy_url(db_url, "psycopg2"), pool_size=2, max_overflow=0)
    try:
        app = App(connector=SQLAlchemyPsycopg2Connector()).open(engine)
        _noop(app).defer(i=1)
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        app.close()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_a_spare_the_server_dropped_is_replaced_unused(pooled: Pooled, db: Any) -> None:
    noop = _noop(pooled.app)
    noop.defer(i=1)
    terminated = db.execute(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchone()["n"]
    assert terminated >= 1
    time.sleep(0.1)  # the goodbye reaches the client sockets
    noop.defer(i=2)
    rows = db.execute("SELECT args->>'i' AS i FROM procq_jobs ORDER BY id").fetchall()
    assert [row["i"] for row in rows] == ["1", "2"]


def test_threads_deferring_at_once_lose_nothing_and_leave_the_pool_whole(
    pooled: Pooled, db: Any
) -> None:
    noop = _noop(pooled.app)

    def burst(thread: int) -> list[int]:
        return [noop.defer(i=thread * 1000 + i) for i in range(100)]

    with ThreadPoolExecutor(max_workers=6) as executor:
        ids = [job_id for batch in executor.map(burst, range(6)) for job_id in batch]
    assert len(set(ids)) == 600
    assert count_jobs(db, "todo") == 600
    assert pooled.out() <= 1
    assert _wait_for(lambda: pooled.out() == 0, timeout=spare.IDLE_SECONDS * 6)


def test_a_forked_child_never_uses_the_parents_spare(db_url: str, db: Any) -> None:
    engine = create_engine(sqlalchemy_url(db_url, "psycopg2"), pool_size=2, max_overflow=0)
    try:
        app = App(connector=SQLAlchemyPsycopg2Connector()).open(engine)
        noop = _noop(app)
        noop.defer(i=1)  # the parent now keeps a spare
        backend = "SELECT pg_backend_pid() AS pid"
        parents = app.sync_connector().fetch_one(backend, {})["pid"]  # type: ignore[index]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads alive
            pid = os.fork()
        if pid == 0:  # the child: SQLAlchemy's advice, then a defer of its own
            code = 1
            try:
                engine.dispose(close=False)
                noop.defer(i=2)
                childs = app.sync_connector().fetch_one(backend, {})["pid"]  # type: ignore[index]
                code = 0 if childs != parents else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert app.sync_connector().fetch_one(backend, {})["pid"] == parents  # type: ignore[index]
        noop.defer(i=3)
        rows = db.execute("SELECT args->>'i' AS i FROM procq_jobs ORDER BY id").fetchall()
        assert [row["i"] for row in rows] == ["1", "2", "3"]
        app.close()
    finally:
        engine.dispose()


def test_a_spare_older_than_its_max_age_goes_back(
    pooled: Pooled, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spare, "MAX_AGE_SECONDS", 0.0)
    noop = _noop(pooled.app)
    before = pooled.checkouts()
    for i in range(5):
        noop.defer(i=i)
    assert pooled.checkouts() - before == 5  # each one went back to the pool
    assert pooled.out() == 0


def test_the_watcher_thread_ends_once_the_spare_is_back(pooled: Pooled) -> None:
    _noop(pooled.app).defer(i=1)
    assert any(t.name.startswith("procq-spare") for t in threading.enumerate())
    assert _wait_for(
        lambda: not any(t.name.startswith("procq-spare") for t in threading.enumerate()),
        timeout=spare.IDLE_SECONDS * 6,
    )


# -- the asyncio connector ---------------------------------------------------------------


def _async_out(app: App) -> int:
    stats = app.async_connector().pool.get_stats()  # type: ignore[attr-defined]
    return int(stats["pool_size"] - stats["pool_available"])


async def test_async_back_to_back_defers_reuse_one_connection(async_app: App, db: Any) -> None:
    noop = _noop(async_app)
    await noop.defer_async(i=0)
    pool = async_app.async_connector().pool  # type: ignore[attr-defined]
    before = pool.get_stats().get("requests_num", 0)
    ids = [await noop.defer_async(i=i) for i in range(1, 101)]
    assert pool.get_stats().get("requests_num", 0) - before <= 1
    assert len(set(ids)) == 100
    assert count_jobs(db, "todo") == 101
    assert _async_out(async_app) == 1


async def test_async_idle_spare_goes_back_to_the_pool(async_app: App) -> None:
    await _noop(async_app).defer_async(i=1)
    assert _async_out(async_app) == 1
    assert await eventually(lambda: _async_out(async_app) == 0, spare.IDLE_SECONDS * 6)


async def test_async_spare_the_server_dropped_is_replaced_unused(async_app: App, db: Any) -> None:
    noop = _noop(async_app)
    await noop.defer_async(i=1)
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    await asyncio.sleep(0.1)
    await noop.defer_async(i=2)
    rows = db.execute("SELECT args->>'i' AS i FROM procq_jobs ORDER BY id").fetchall()
    assert [row["i"] for row in rows] == ["1", "2"]


async def test_async_close_gives_the_spare_back(db_url: str) -> None:
    pool = psycopg_pool.AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    try:
        app = App(connector=PsycopgConnector())
        await app.open_async(pool)
        await _noop(app).defer_async(i=1)
        assert pool.get_stats()["pool_available"] == pool.get_stats()["pool_size"] - 1
        await app.close_async()
        assert pool.get_stats()["pool_available"] == pool.get_stats()["pool_size"]
    finally:
        await pool.close()


async def test_aiopg_keeps_one_spare_and_gives_it_back_when_idle(db_url: str, db: Any) -> None:
    app = App(connector=AiopgConnector(dsn=db_url, minsize=1, maxsize=3))
    await app.open_async()
    try:
        pool = app.async_connector().pool  # type: ignore[attr-defined]
        noop = _noop(app)
        ids = [await noop.defer_async(i=i) for i in range(20)]
        assert len(set(ids)) == 20
        assert count_jobs(db, "todo") == 20
        assert pool.size - pool.freesize == 1  # the spare, out of the pool
        assert await eventually(lambda: pool.size == pool.freesize, spare.IDLE_SECONDS * 6)
    finally:
        await app.close_async()
