"""Deferring inside the application's own sessions and connections: the job commits with
the business rows or vanishes with them, with a real worker running alongside."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import create_database, drop_database
from polling import count_jobs
from sqlalchemy import Engine, String, create_engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

from procq_sqla import AlreadyEnqueued, App, WrongConnector
from procq_sqla.contrib.sqlalchemy import SQLAlchemyPsycopg2Connector
from procq_sqla.database import sqlalchemy_url
from procq_sqla.worker import Worker

DRIVERS = ["psycopg2", "psycopg"]
KINDS = ["session", "scoped_session", "connection"]


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(50))


@pytest.fixture(params=DRIVERS)
def engine(request: pytest.FixtureRequest, db_url: str) -> Iterator[Engine]:
    created = create_engine(sqlalchemy_url(db_url, request.param), pool_size=3, max_overflow=0)
    Base.metadata.create_all(created)
    yield created
    created.dispose()


class BackgroundWorker:
    """A real worker in its own thread and event loop, so the test's blocking sessions
    run alongside it exactly as a web process and a worker process would."""

    def __init__(self, app: App, **options: Any) -> None:
        self.app = app
        self.options = {"install_signal_handlers": False, **options}
        self.worker: Worker | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        async with self.app.open_async():
            self.worker = Worker(self.app, self.app.async_connector(), **self.options)
            self.started.set()
            await self.worker.run()

    def __enter__(self) -> BackgroundWorker:
        self.thread.start()
        assert self.started.wait(10), "the worker did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self.worker is not None
        self.loop.call_soon_threadsafe(self.worker.stop)
        self.thread.join(20)
        assert not self.thread.is_alive(), "the worker did not stop"


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until predicate() held (fails the test after timeout)."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out waiting"
        time.sleep(0.01)
    return time.monotonic() - start


def count_orders(db: Any) -> int:
    return int(db.execute("SELECT count(*) AS n FROM orders").fetchone()["n"])


@pytest.fixture
def app(engine: Engine) -> Iterator[App]:
    app = App(connector=SQLAlchemyPsycopg2Connector())
    with app.open(engine):
        yield app


@pytest.fixture
def ran(app: App) -> list[int]:
    """Order ids the `ship` task has run for."""
    done: list[int] = []

    @app.task(name="ship")
    def ship(order_id: int) -> None:
        done.append(order_id)

    @app.task(name="ship_once", queueing_lock="ship-once")
    def ship_once(order_id: int) -> None:
        done.append(order_id)

    return done


def make_target(kind: str, engine: Engine) -> tuple[Any, Callable[[], None], Callable[[], None]]:
    """A session-like object of `kind`, its commit and its rollback (and close)."""
    if kind == "session":
        session = Session(engine)
        return session, session.commit, session.close
    if kind == "scoped_session":
        scoped = scoped_session(sessionmaker(engine))
        return scoped, scoped.commit, scoped.remove
    connection = engine.connect()
    return connection, connection.commit, connection.close


def add_order(target: Any, order_id: int) -> None:
    if hasattr(target, "add"):
        target.add(Order(id=order_id, item="book"))
        target.flush()
    else:
        target.execute(text("INSERT INTO orders (id, item) VALUES (:i, 'book')"), {"i": order_id})


@pytest.mark.parametrize("kind", KINDS)
def test_committed_job_runs_with_its_rows(
    kind: str, app: App, engine: Engine, ran: list[int], db: Any
) -> None:
    target, commit, close = make_target(kind, engine)
    ship = app.tasks["ship"]
    with BackgroundWorker(app, fetch_job_polling_interval=0.05):
        add_order(target, 1)
        job_id = ship.configure(session=target).defer(order_id=1)
        ids = ship.configure(session=target).batch_defer({"order_id": 2}, {"order_id": 3})
        commit()
        close()
        wait_for(lambda: len(ran) == 3)
    assert sorted(ran) == [1, 2, 3]
    assert count_orders(db) == 1
    rows = db.execute("SELECT id, status FROM procq_jobs ORDER BY id").fetchall()
    assert [(r["id"], r["status"]) for r in rows] == [(i, "succeeded") for i in [job_id, *ids]]


@pytest.mark.parametrize("kind", KINDS)
def test_rolled_back_job_never_exists(kind: str, app: App, engine: Engine, db: Any) -> None:
    target, _, close = make_target(kind, engine)

    @app.task(name="t")
    def t() -> None: ...

    add_order(target, 1)
    t.configure(session=target).defer()
    t.configure(session=target).batch_defer({}, {})
    target.rollback()
    close()
    assert (count_jobs(db), count_orders(db)) == (0, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_defer_never_commits_for_the_caller(kind: str, app: App, engine: Engine, db: Any) -> None:
    target, _, close = make_target(kind, engine)

    @app.task(name="t")
    def t() -> None: ...

    job_id = t.configure(session=target).defer()
    assert job_id > 0
    assert count_jobs(db) == 0  # invisible to everyone else until the caller commits
    close()  # closing without commit discards it
    assert count_jobs(db) == 0


def test_exception_inside_session_begin_leaves_no_job(app: App, engine: Engine, db: Any) -> None:
    @app.task(name="t")
    def t() -> None: ...

    with (
        pytest.raises(RuntimeError, match="payment declined"),
        Session(engine) as session,
        session.begin(),
    ):
        session.add(Order(id=1, item="book"))
        t.configure(session=session).defer()
        raise RuntimeError("payment declined")
    assert (count_jobs(db), count_orders(db)) == (0, 0)


def test_integrity_error_at_commit_leaves_no_job(app: App, engine: Engine, db: Any) -> None:
    @app.task(name="t")
    def t() -> None: ...

    with Session(engine) as session, session.begin():
        session.add(Order(id=1, item="first"))

    session = Session(engine)
    session.add(Order(id=1, item="duplicate"))  # pending: flushed only at commit
    t.configure(session=session).defer()
    with pytest.raises(IntegrityError):
        session.commit()
    session.close()
    assert count_jobs(db) == 0
    assert db.execute("SELECT item FROM orders").fetchone()["item"] == "first"


def test_polling_worker_never_sees_an_uncommitted_job(
    app: App, engine: Engine, ran: list[int], db: Any
) -> None:
    ship = app.tasks["ship"]
    with BackgroundWorker(app, listen_notify=False, fetch_job_polling_interval=0.02) as bg:
        with Session(engine) as session:
            session.add(Order(id=1, item="book"))
            ship.configure(session=session).defer(order_id=1)
            time.sleep(0.5)  # about 25 polls
            assert ran == []
            assert count_jobs(db) == 0
            session.commit()
        wait_for(lambda: ran == [1])
        worker = bg.worker
        assert worker is not None
        wait_for(lambda: worker.processed == 1)  # counted once its outcome is queued


def listening(db: Any) -> bool:
    row = db.execute(
        "SELECT count(*) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN %%'"
    ).fetchone()
    return bool(row["n"])


def test_worker_wake_up_arrives_at_commit(
    app: App, engine: Engine, ran: list[int], db: Any
) -> None:
    ship = app.tasks["ship"]
    # polling every 30 s: only the NOTIFY sent at commit can start the job promptly
    with BackgroundWorker(app, listen_notify=True, fetch_job_polling_interval=30):
        wait_for(lambda: listening(db))
        with Session(engine) as session:
            ship.configure(session=session).defer(order_id=1)
            time.sleep(0.3)
            assert ran == []  # no wake-up before commit
            session.commit()
        latency = wait_for(lambda: ran == [1], timeout=5.0)
    assert latency < 2.0


@pytest.mark.parametrize("kind", KINDS)
def test_queueing_lock_conflict_raises_and_keeps_the_session_usable(
    kind: str, app: App, engine: Engine, ran: list[int], db: Any
) -> None:
    target, commit, close = make_target(kind, engine)
    ship_once = app.tasks["ship_once"]
    add_order(target, 1)
    first = ship_once.configure(session=target).defer(order_id=1)
    with pytest.raises(AlreadyEnqueued):
        ship_once.configure(session=target).defer(order_id=1)
    with pytest.raises(AlreadyEnqueued):
        ship_once.configure(session=target).batch_defer({"order_id": 1})
    add_order(target, 2)  # the transaction is still alive thanks to the savepoint
    commit()
    close()
    rows = db.execute("SELECT id, queueing_lock FROM procq_jobs").fetchall()
    assert [(r["id"], r["queueing_lock"]) for r in rows] == [(first, "ship-once")]
    assert count_orders(db) == 2


def test_queueing_lock_taken_by_a_committed_job(app: App, engine: Engine, db: Any) -> None:
    @app.task(name="t", queueing_lock="nightly")
    def t() -> None: ...

    t.defer()  # committed through the engine
    with Session(engine) as session:
        session.add(Order(id=1, item="book"))
        with pytest.raises(AlreadyEnqueued):
            t.configure(session=session).defer()
        assert t.configure(session=session).batch_defer({}, ignore_already_enqueued=True) == []
        session.commit()
    assert (count_jobs(db), count_orders(db)) == (1, 1)


@pytest.mark.parametrize("bad", ["a string", 42, object()])
def test_something_that_is_not_a_session_is_a_type_error(app: App, bad: Any) -> None:
    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(TypeError, match="session= takes a SQLAlchemy Session"):
        t.configure(session=bad).defer()


def test_session_on_another_dialect_names_the_supported_ones(app: App) -> None:
    @app.task(name="t")
    def t() -> None: ...

    sqlite = create_engine("sqlite://")
    with Session(sqlite) as session, pytest.raises(WrongConnector) as info:
        t.configure(session=session).defer()
    assert "sqlite+pysqlite" in str(info.value)
    assert "postgresql+psycopg2://" in str(info.value)
    sqlite.dispose()


def test_an_engine_is_not_a_session(app: App, engine: Engine) -> None:
    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(TypeError, match="not Engine"):
        t.configure(session=engine).defer()


async def test_defer_async_with_a_sync_session_is_a_type_error(app: App, engine: Engine) -> None:
    @app.task(name="t")
    def t() -> None: ...

    with Session(engine) as session, pytest.raises(TypeError, match="AsyncSession"):
        await t.configure(session=session).defer_async()


def test_session_on_another_database_writes_the_job_there(
    app: App, engine: Engine, server_url: str, template_db: str, db: Any
) -> None:
    """Documented: the job goes where the session's transaction is, not to the app's
    engine; a worker must read that database to run it."""
    name = f"procq_other_{int(time.time() * 1000) % 10**9}"
    other_url = create_database(server_url, name, template=template_db)
    other = create_engine(sqlalchemy_url(other_url, engine.dialect.driver))
    try:

        @app.task(name="t")
        def t() -> None: ...

        with Session(other) as session, session.begin():
            job_id = t.configure(session=session).defer()
        with other.connect() as conn:
            found = conn.execute(text("SELECT id FROM procq_jobs")).scalars().all()
        assert found == [job_id]
        assert count_jobs(db) == 0
    finally:
        other.dispose()
        drop_database(server_url, name)


def test_flask_sqlalchemy_db_session(db_url: str, db: Any) -> None:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    flask_app = Flask(__name__)
    flask_app.config["SQLALCHEMY_DATABASE_URI"] = sqlalchemy_url(db_url, "psycopg2")
    fdb = SQLAlchemy(flask_app)

    class Item(fdb.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "items"
        id: Mapped[int] = mapped_column(primary_key=True)

    procq = App(connector=SQLAlchemyPsycopg2Connector())

    @procq.task(name="t")
    def t(item_id: int) -> None: ...

    with flask_app.app_context():
        fdb.create_all()
        procq.open(fdb.engine)
        fdb.session.add(Item(id=1))
        t.configure(session=fdb.session).defer(item_id=1)
        fdb.session.commit()
        fdb.session.add(Item(id=2))
        t.configure(session=fdb.session).defer(item_id=2)
        fdb.session.rollback()
        procq.close()
        fdb.engine.dispose()
    rows = db.execute("SELECT args FROM procq_jobs").fetchall()
    assert [r["args"] for r in rows] == [{"item_id": 1}]
    assert [r["id"] for r in db.execute("SELECT id FROM items").fetchall()] == [1]
