"""One contract, every connector: the same tests run against each of them on real
PostgreSQL. Deferring (one, many, every `configure` option, custom JSON), the
queueing-lock conflict, a pooled connection killed by the server, reading a job's status;
the async connectors also run a worker (LISTEN/NOTIFY included).

Adding a connector = adding one `Flavor` to `FLAVORS`. The SQLAlchemy connector joins
by itself as soon as `procq_sqla.contrib.sqlalchemy.SQLAlchemyPsycopg2Connector` exists
(see `_sqlalchemy_flavor`): its absence is reported in the collected ids, not skipped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from procq_sqla import (
    AiopgConnector,
    AlreadyEnqueued,
    App,
    Psycopg2Connector,
    PsycopgConnector,
    SyncPsycopgConnector,
    WrongConnector,
)
from procq_sqla.database import conninfo_kwargs, sqlalchemy_url
from procq_sqla.worker import Worker

OpenApp = Callable[..., AbstractAsyncContextManager[App]]


@dataclass(frozen=True)
class Flavor:
    """How to build and open an app on one connector, and whether it is async."""

    name: str
    is_async: bool
    open_app: OpenApp

    def __str__(self) -> str:
        return self.name


@asynccontextmanager
async def _async_app(connector: Any) -> AsyncIterator[App]:
    app = App(connector=connector)
    await app.open_async()
    try:
        yield app
    finally:
        await app.close_async()


@asynccontextmanager
async def _sync_app(connector: Any, pool_or_engine: Any = None) -> AsyncIterator[App]:
    app = App(connector=connector)
    app.open(pool_or_engine)
    try:
        yield app
    finally:
        app.close()


def _psycopg(url: str, **kw: Any) -> AbstractAsyncContextManager[App]:
    return _async_app(PsycopgConnector(conninfo=url, **kw))


def _aiopg(url: str, **kw: Any) -> AbstractAsyncContextManager[App]:
    return _async_app(AiopgConnector(dsn=url, **kw))


def _sync_psycopg(url: str, **kw: Any) -> AbstractAsyncContextManager[App]:
    return _sync_app(SyncPsycopgConnector(conninfo=url, **kw))


def _psycopg2(url: str, **kw: Any) -> AbstractAsyncContextManager[App]:
    return _sync_app(Psycopg2Connector(**conninfo_kwargs(url), **kw))


def _sqlalchemy_flavor() -> Flavor | None:
    """The parametrization hook for `SQLAlchemyPsycopg2Connector` (engine-shared pool)."""
    try:
        from procq_sqla.contrib.sqlalchemy import SQLAlchemyPsycopg2Connector
    except ImportError:
        return None

    @asynccontextmanager
    async def open_app(url: str, **kw: Any) -> AsyncIterator[App]:
        import sqlalchemy

        engine = sqlalchemy.create_engine(sqlalchemy_url(url, "psycopg2"))
        try:
            async with _sync_app(SQLAlchemyPsycopg2Connector(**kw), engine) as app:
                yield app
        finally:
            engine.dispose()

    return Flavor("sqlalchemy_psycopg2", False, open_app)


FLAVORS = [
    Flavor("psycopg", True, _psycopg),
    Flavor("aiopg", True, _aiopg),
    Flavor("sync_psycopg", False, _sync_psycopg),
    Flavor("psycopg2", False, _psycopg2),
    *filter(None, [_sqlalchemy_flavor()]),
]
ASYNC_FLAVORS = [f for f in FLAVORS if f.is_async]
SYNC_FLAVORS = [f for f in FLAVORS if not f.is_async]


@pytest.fixture(params=FLAVORS, ids=str)
def flavor(request: pytest.FixtureRequest) -> Flavor:
    return request.param  # type: ignore[no-any-return]


async def defer(flavor: Flavor, target: Any, **kwargs: Any) -> int:
    """`target.defer(...)`, or `await target.defer_async(...)` on an async connector."""
    if flavor.is_async:
        return await target.defer_async(**kwargs)  # type: ignore[no-any-return]
    return target.defer(**kwargs)  # type: ignore[no-any-return]


async def batch_defer(flavor: Flavor, target: Any, *args: Any, **kwargs: Any) -> list[int]:
    if flavor.is_async:
        return await target.batch_defer_async(*args, **kwargs)  # type: ignore[no-any-return]
    return target.batch_defer(*args, **kwargs)  # type: ignore[no-any-return]


async def get_job(flavor: Flavor, app: App, job_id: int) -> Any:
    if flavor.is_async:
        return await app.job_manager.get_job_async(job_id)
    return app.job_manager.get_job(job_id)


async def run_worker(flavor: Flavor, app: App, url: str) -> None:
    """Drain the queue: on the app itself when async, else on a PsycopgConnector twin."""
    if flavor.is_async:
        await app.run_worker_async(wait=False, install_signal_handlers=False)
        return
    async with _psycopg(url) as worker_app:
        worker_app.tasks = app.tasks
        await worker_app.run_worker_async(wait=False, install_signal_handlers=False)


def kill_app_connections(db: psycopg.Connection[Any]) -> int:
    """Terminate every other session on the test database; wait until they are gone."""
    row = db.execute(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) AS n "
        "FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    ).fetchone()
    assert row is not None
    return int(row["n"])


def job_row(db: psycopg.Connection[Any], job_id: int) -> dict[str, Any]:
    row = db.execute("SELECT * FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None, f"no job {job_id}"
    return dict(row)


# -- deferring -----------------------------------------------------------------------------


async def test_defer_inserts_one_waiting_row(flavor: Flavor, db_url: str, db: Any) -> None:
    async with flavor.open_app(db_url) as app:

        @app.task(queue="emails", priority=3, name="send")
        def send(to: str) -> None: ...

        job_id = await defer(flavor, send, to="a@example.org")

    row = job_row(db, job_id)
    assert (row["task_name"], row["queue"], row["priority"]) == ("send", "emails", 3)
    assert row["args"] == {"to": "a@example.org"}
    assert (row["status"], row["attempts"], row["scheduled_at"]) == ("todo", 0, None)


async def test_batch_defer_returns_ids_in_input_order(flavor: Flavor, db_url: str, db: Any) -> None:
    async with flavor.open_app(db_url) as app:

        @app.task(name="t")
        def t(n: int) -> None: ...

        ids = await batch_defer(flavor, t, *({"n": i} for i in range(20)))

    rows = db.execute("SELECT id, args FROM procq_jobs ORDER BY id").fetchall()
    assert [r["id"] for r in rows] == ids
    assert [r["args"]["n"] for r in rows] == list(range(20))


async def test_configure_sets_every_option(flavor: Flavor, db_url: str, db: Any) -> None:
    when = dt.datetime(2031, 5, 4, 3, 2, 1, tzinfo=dt.UTC)
    async with flavor.open_app(db_url) as app:

        @app.task(name="t")
        def t() -> None: ...

        configured = t.configure(
            queue="urgent", priority=7, lock="user:1", queueing_lock="q:1", schedule_at=when
        )
        first = await defer(flavor, configured)
        later = await defer(flavor, t.configure(schedule_in={"hours": 2}))
        many = await batch_defer(flavor, t.configure(queue="bulk", priority=-2), {}, {})

    row = job_row(db, first)
    assert (row["queue"], row["priority"], row["lock"], row["queueing_lock"]) == (
        "urgent",
        7,
        "user:1",
        "q:1",
    )
    assert row["scheduled_at"] == when
    in_two_hours = job_row(db, later)["scheduled_at"] - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=1, minutes=59) < in_two_hours <= dt.timedelta(hours=2)
    assert [(job_row(db, i)["queue"], job_row(db, i)["priority"]) for i in many] == [
        ("bulk", -2),
        ("bulk", -2),
    ]


async def test_custom_json_dumps_and_loads_are_used(flavor: Flavor, db_url: str, db: Any) -> None:
    def dumps(value: Any) -> str:
        return json.dumps(value, default=str)

    def loads(data: str | bytes) -> Any:
        return json.loads(data, parse_float=Decimal)

    async with flavor.open_app(db_url, json_dumps=dumps, json_loads=loads) as app:

        @app.task(name="t")
        def t(**kwargs: Any) -> None: ...

        job_id = await defer(flavor, t, price=1.25, day=dt.date(2030, 1, 2))
        job = await get_job(flavor, app, job_id)

    assert job_row(db, job_id)["args"] == {"price": 1.25, "day": "2030-01-02"}
    assert job.args == {"price": Decimal("1.25"), "day": "2030-01-02"}
    assert isinstance(job.args["price"], Decimal)


async def test_queueing_lock_conflict_raises_already_enqueued(
    flavor: Flavor, db_url: str, db: Any
) -> None:
    async with flavor.open_app(db_url) as app:

        @app.task(name="t", queueing_lock="only-one")
        def t(n: int) -> None: ...

        first = await defer(flavor, t, n=1)
        with pytest.raises(AlreadyEnqueued):
            await defer(flavor, t, n=2)
        with pytest.raises(AlreadyEnqueued):
            await batch_defer(flavor, t, {"n": 3})
        skipped = await batch_defer(flavor, t, {"n": 4}, ignore_already_enqueued=True)
        after = await defer(flavor, t.configure(queueing_lock="another"), n=5)

    rows = db.execute("SELECT id, args FROM procq_jobs ORDER BY id").fetchall()
    assert skipped == []
    assert [(r["id"], r["args"]["n"]) for r in rows] == [(first, 1), (after, 5)]


async def test_connection_killed_by_server_does_not_fail_next_call(
    flavor: Flavor, db_url: str, db: Any
) -> None:
    async with flavor.open_app(db_url) as app:

        @app.task(name="t")
        def t(n: int) -> None: ...

        before = await defer(flavor, t, n=1)
        assert kill_app_connections(db) >= 1
        after = await defer(flavor, t, n=2)
        assert kill_app_connections(db) >= 1
        batch = await batch_defer(flavor, t, {"n": 3})
        assert kill_app_connections(db) >= 1
        job = await get_job(flavor, app, after)

    assert job.args == {"n": 2}
    rows = db.execute("SELECT id FROM procq_jobs ORDER BY id").fetchall()
    assert [r["id"] for r in rows] == [before, after, *batch]


async def test_job_status_is_read_through_job_manager(flavor: Flavor, db_url: str, db: Any) -> None:
    async with flavor.open_app(db_url) as app:

        @app.task(name="ok")
        def ok() -> None: ...

        @app.task(name="boom")
        def boom() -> None:
            raise ValueError("no luck")

        good = await defer(flavor, ok)
        bad = await defer(flavor, boom)
        assert (await get_job(flavor, app, good)).status == "todo"
        await run_worker(flavor, app, db_url)
        done, failed = await get_job(flavor, app, good), await get_job(flavor, app, bad)

    assert (done.status, done.attempts) == ("succeeded", 1)
    assert failed.status == "failed"
    assert "ValueError: no luck" in (failed.last_error or "")


# -- async connectors: the worker ----------------------------------------------------------


@pytest.mark.parametrize("flavor", ASYNC_FLAVORS, ids=str)
async def test_worker_is_woken_by_notify_not_polling(flavor: Flavor, db_url: str) -> None:
    ran: list[int] = []
    async with flavor.open_app(db_url) as app:

        @app.task(name="t")
        async def t(n: int) -> None:
            ran.append(n)

        ready = asyncio.Event()
        worker = Worker(
            app,
            app.async_connector(),
            fetch_job_polling_interval=600,
            install_signal_handlers=False,
        )
        worker._wake.set = _also(worker._wake.set, ready.set)  # type: ignore[method-assign]
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(ready.wait(), 10)  # LISTEN is in place (on_ready)
        await t.defer_async(n=1)
        await t.defer_async(n=2)
        for _ in range(200):
            if sorted(ran) == [1, 2]:
                break
            await asyncio.sleep(0.025)
        worker.stop()
        await asyncio.wait_for(running, 10)

    assert sorted(ran) == [1, 2]


@pytest.mark.parametrize("flavor", ASYNC_FLAVORS, ids=str)
async def test_worker_listens_again_after_its_connections_are_killed(
    flavor: Flavor, db_url: str, db: Any
) -> None:
    ran: list[int] = []
    async with flavor.open_app(db_url) as app:

        @app.task(name="t")
        async def t(n: int) -> None:
            ran.append(n)

        ready = asyncio.Event()
        worker = Worker(
            app,
            app.async_connector(),
            fetch_job_polling_interval=600,
            install_signal_handlers=False,
        )
        listens = 0

        async def counting_listen(*args: Any) -> None:
            nonlocal listens
            listens += 1
            ready.set()
            await original(*args)

        original = worker.connector.listen
        worker.connector = _Proxy(worker.connector, listen=counting_listen)
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.sleep(0.2)  # the LISTENs are in place
        ready.clear()
        assert kill_app_connections(db) >= 2  # the listener and the pooled connection
        await asyncio.wait_for(ready.wait(), 10)  # the supervisor listens again
        await asyncio.sleep(0.2)
        await t.defer_async(n=1)
        for _ in range(200):
            if ran:
                break
            await asyncio.sleep(0.025)
        worker.stop()
        await asyncio.wait_for(running, 10)

    assert ran == [1]
    assert listens == 2


class _Proxy:
    """The connector with some of its methods replaced (to watch the worker use it)."""

    def __init__(self, target: Any, **overrides: Any) -> None:
        self._target = target
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def _also(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        first()
        second()

    return both


@pytest.mark.parametrize("flavor", ASYNC_FLAVORS, ids=str)
async def test_worker_survives_killed_connections(flavor: Flavor, db_url: str, db: Any) -> None:
    async with flavor.open_app(db_url) as app:

        @app.task(name="t")
        def t(n: int) -> None: ...

        ids = await t.batch_defer_async({"n": 1}, {"n": 2})
        kill_app_connections(db)
        await app.run_worker_async(wait=False, install_signal_handlers=False)

    statuses = db.execute("SELECT status FROM procq_jobs ORDER BY id").fetchall()
    assert len(ids) == 2
    assert [r["status"] for r in statuses] == ["succeeded", "succeeded"]


# -- sync connectors: a clear error where async I/O is needed ------------------------------


@pytest.mark.parametrize(
    "flavor", [f for f in SYNC_FLAVORS if f.name in ("sync_psycopg", "psycopg2")], ids=str
)
async def test_sync_connector_refuses_worker_and_defer_async(flavor: Flavor, db_url: str) -> None:
    async with flavor.open_app(db_url) as app:

        @app.task(name="t")
        def t() -> None: ...

        with pytest.raises(WrongConnector) as deferring:
            await t.defer_async()
        with pytest.raises(WrongConnector) as working:
            await app.run_worker_async(wait=False, install_signal_handlers=False)
        with pytest.raises(WrongConnector) as pairing:
            app.connector.get_worker_connector()  # type: ignore[union-attr]

    for raised in (deferring, working, pairing):
        message = str(raised.value)
        assert "PsycopgConnector" in message
        assert "AiopgConnector" in message
        assert "get_worker_connector()" in message
