"""`await task.configure(session=async_session).defer_async(...)` with SQLAlchemy's asyncio
extension on the psycopg 3 dialect: the same guarantees as with a blocking Session."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import String, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from procq_sqla import AlreadyEnqueued, App
from procq_sqla.database import sqlalchemy_url
from procq_sqla.worker import Worker

KINDS = ["session", "scoped_session", "connection"]


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(50))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    created = create_async_engine(sqlalchemy_url(db_url, "psycopg"), pool_size=3)
    async with created.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield created
    await created.dispose()


@pytest.fixture
def ran(async_app: App) -> list[int]:
    done: list[int] = []

    @async_app.task(name="ship")
    async def ship(order_id: int) -> None:
        done.append(order_id)

    @async_app.task(name="ship_once", queueing_lock="ship-once")
    async def ship_once(order_id: int) -> None:
        done.append(order_id)

    return done


class RunningWorker:
    """A worker as a task of this event loop, stopped through `Worker.stop()`."""

    def __init__(self, app: App, **options: Any) -> None:
        self.worker = Worker(app, app.async_connector(), install_signal_handlers=False, **options)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Worker:
        self.task = asyncio.create_task(self.worker.run())
        return self.worker

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.worker.stop()
        await asyncio.wait_for(self.task, 20)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out waiting"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def counts(db: Any) -> tuple[int, int]:
    jobs = db.execute("SELECT count(*) AS n FROM procq_jobs").fetchone()["n"]
    orders = db.execute("SELECT count(*) AS n FROM orders").fetchone()["n"]
    return int(jobs), int(orders)


async def make_target(kind: str, engine: AsyncEngine) -> tuple[Any, Any]:
    """An async session-like object of `kind` and a coroutine function closing it."""
    if kind == "session":
        session = AsyncSession(engine)
        return session, session.close
    if kind == "scoped_session":
        scoped = async_scoped_session(async_sessionmaker(engine), scopefunc=asyncio.current_task)
        return scoped, scoped.remove
    connection = await engine.connect()
    return connection, connection.close


async def add_order(target: Any, order_id: int) -> None:
    if hasattr(target, "add"):
        target.add(Order(id=order_id, item="book"))
        await target.flush()
    else:
        await target.execute(
            text("INSERT INTO orders (id, item) VALUES (:i, 'book')"), {"i": order_id}
        )


@pytest.mark.parametrize("kind", KINDS)
async def test_committed_job_runs(
    kind: str, async_app: App, engine: AsyncEngine, ran: list[int], db: Any
) -> None:
    target, close = await make_target(kind, engine)
    ship = async_app.tasks["ship"]
    async with RunningWorker(async_app, fetch_job_polling_interval=0.05):
        await add_order(target, 1)
        await ship.configure(session=target).defer_async(order_id=1)
        await ship.configure(session=target).batch_defer_async({"order_id": 2})
        await target.commit()
        await close()
        await wait_for(lambda: len(ran) == 2)
    assert sorted(ran) == [1, 2]
    assert counts(db) == (2, 1)


@pytest.mark.parametrize("kind", KINDS)
async def test_rolled_back_job_never_exists(
    kind: str, async_app: App, engine: AsyncEngine, ran: list[int], db: Any
) -> None:
    target, close = await make_target(kind, engine)
    await add_order(target, 1)
    await async_app.tasks["ship"].configure(session=target).defer_async(order_id=1)
    await target.rollback()
    await close()
    assert counts(db) == (0, 0)


async def test_exception_inside_begin_leaves_no_job(
    async_app: App, engine: AsyncEngine, ran: list[int], db: Any
) -> None:
    with pytest.raises(RuntimeError, match="declined"):
        async with AsyncSession(engine) as session, session.begin():
            session.add(Order(id=1, item="book"))
            await async_app.tasks["ship"].configure(session=session).defer_async(order_id=1)
            raise RuntimeError("declined")
    assert counts(db) == (0, 0)


async def test_integrity_error_at_commit_leaves_no_job(
    async_app: App, engine: AsyncEngine, ran: list[int], db: Any
) -> None:
    async with AsyncSession(engine) as session, session.begin():
        session.add(Order(id=1, item="first"))
    async with AsyncSession(engine) as session:
        session.add(Order(id=1, item="duplicate"))
        await async_app.tasks["ship"].configure(session=session).defer_async(order_id=1)
        with pytest.raises(IntegrityError):
            await session.commit()
    assert counts(db) == (0, 1)


async def test_polling_worker_never_sees_an_uncommitted_job(
    async_app: App, engine: AsyncEngine, ran: list[int], db: Any
) -> None:
    ship = async_app.tasks["ship"]
    async with RunningWorker(async_app, listen_notify=False, fetch_job_polling_interval=0.02):
        async with AsyncSession(engine) as session:
            await ship.configure(session=session).defer_async(order_id=1)
            await asyncio.sleep(0.5)
            assert ran == []
            await session.commit()
        await wait_for(lambda: ran == [1])


async def test_worker_wake_up_arrives_at_commit(
    async_app: App, engine: AsyncEngine, ran: list[int], db: Any
) -> None:
    ship = async_app.tasks["ship"]
    async with RunningWorker(async_app, listen_notify=True, fetch_job_polling_interval=30):
        await wait_for(lambda: _listening(db))
        async with AsyncSession(engine) as session:
            await ship.configure(session=session).defer_async(order_id=1)
            await asyncio.sleep(0.3)
            assert ran == []
            await session.commit()
        latency = await wait_for(lambda: ran == [1], timeout=5.0)
    assert latency < 2.0


def _listening(db: Any) -> bool:
    row = db.execute(
        "SELECT count(*) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN %%'"
    ).fetchone()
    return bool(row["n"])


@pytest.mark.parametrize("kind", KINDS)
async def test_queueing_lock_conflict_keeps_the_session_usable(
    kind: str, async_app: App, engine: AsyncEngine, ran: list[int], db: Any
) -> None:
    target, close = await make_target(kind, engine)
    ship_once = async_app.tasks["ship_once"]
    await add_order(target, 1)
    await ship_once.configure(session=target).defer_async(order_id=1)
    with pytest.raises(AlreadyEnqueued):
        await ship_once.configure(session=target).defer_async(order_id=1)
    await add_order(target, 2)
    await target.commit()
    await close()
    assert counts(db) == (1, 2)


async def test_sync_defer_with_an_async_session_is_a_type_error(
    async_app: App, engine: AsyncEngine, ran: list[int]
) -> None:
    async with AsyncSession(engine) as session:
        with pytest.raises(TypeError, match="defer_async"):
            async_app.tasks["ship"].configure(session=session).defer(order_id=1)


async def test_defer_async_with_a_non_session_is_a_type_error(
    async_app: App, ran: list[int]
) -> None:
    with pytest.raises(TypeError, match="AsyncSession or AsyncConnection, not str"):
        await async_app.tasks["ship"].configure(session="nope").defer_async(order_id=1)
