"""SQLAlchemyPsycopg2Connector: borrowing an application's engine (either dialect), its
own engine from a DSN, the paired worker connector, and bad input."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import create_async_engine

import procq_sqla
from procq_sqla import (
    AlreadyEnqueued,
    App,
    AppNotOpen,
    ConnectorError,
    PsycopgConnector,
    WrongConnector,
)
from procq_sqla.contrib.sqlalchemy import (
    SQLAlchemyPsycopg2Connector,
    SQLAlchemyPsycopgConnector,
)
from procq_sqla.database import conninfo_kwargs, sqlalchemy_url

DRIVERS = ["psycopg2", "psycopg"]
SECRET = "Sq1a-S3cret-9052"


@pytest.fixture(params=DRIVERS)
def engine(request: pytest.FixtureRequest, db_url: str) -> Iterator[Engine]:
    """The application's own engine, on each supported dialect."""
    created = create_engine(sqlalchemy_url(db_url, request.param), pool_size=2, max_overflow=0)
    yield created
    created.dispose()


def status_of(db: Any, job_id: int) -> str:
    row = db.execute("SELECT status FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    return str(row["status"]) if row else "missing"


def test_both_names_are_importable_from_the_package() -> None:
    assert procq_sqla.SQLAlchemyPsycopg2Connector is SQLAlchemyPsycopg2Connector
    assert procq_sqla.SQLAlchemyPsycopgConnector is SQLAlchemyPsycopgConnector


def test_borrowed_engine_defers_and_is_never_disposed(engine: Engine, db: Any) -> None:
    disposed: list[Engine] = []
    event.listen(engine, "engine_disposed", disposed.append)
    app = App(connector=SQLAlchemyPsycopg2Connector())

    @app.task(name="t")
    def t(n: int) -> None: ...

    with app.open(engine):
        job_id = t.defer(n=1)
        ids = t.batch_defer({"n": 2}, {"n": 3})
        assert app.job_manager.get_job(job_id).args == {"n": 1}

    rows = db.execute("SELECT id, args, status FROM procq_jobs ORDER BY id").fetchall()
    assert [(r["id"], r["args"]["n"], r["status"]) for r in rows] == [
        (job_id, 1, "todo"),
        (ids[0], 2, "todo"),
        (ids[1], 3, "todo"),
    ]
    assert disposed == []
    assert engine.pool.checkedin() >= 1  # the engine's pooled connection is still there
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM procq_jobs")).scalar() == 3


def test_defer_commits_on_its_own_and_leaves_connection_as_it_was(engine: Engine, db: Any) -> None:
    app = App(connector=SQLAlchemyPsycopg2Connector()).open(engine)

    @app.task(name="t")
    def t() -> None: ...

    job_id = t.defer()
    # visible from another connection at once: the defer committed by itself
    assert status_of(db, job_id) == "todo"
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]
        conn.execute(text("CREATE TABLE scratch (x int)"))
        conn.rollback()  # the engine's usual transactional behaviour is intact
    assert db.execute("SELECT to_regclass('scratch') AS t").fetchone()["t"] is None
    app.close()


def test_own_engine_from_dsn_is_created_and_disposed(db_url: str, db: Any) -> None:
    connector = SQLAlchemyPsycopg2Connector(dsn=db_url, pool_size=1, max_overflow=0)
    app = App(connector=connector)

    @app.task(name="t")
    def t() -> None: ...

    with app.open():
        own = connector.engine
        assert own.dialect.driver == "psycopg2"
        assert own.pool.size() == 1  # the engine keywords reached create_engine
        disposed: list[Engine] = []
        event.listen(own, "engine_disposed", disposed.append)
        job_id = t.defer()
    assert disposed == [own]
    assert status_of(db, job_id) == "todo"
    with pytest.raises(AppNotOpen):
        connector.engine  # noqa: B018


def test_psycopg3_sibling_creates_a_psycopg_engine(db_url: str, db: Any) -> None:
    connector = SQLAlchemyPsycopgConnector(dsn=db_url)
    app = App(connector=connector)

    @app.task(name="t")
    def t() -> None: ...

    with app.open():
        assert connector.engine.dialect.driver == "psycopg"
        job_id = t.defer()
    assert status_of(db, job_id) == "todo"


def test_queueing_lock_conflict_raises_already_enqueued(engine: Engine, db: Any) -> None:
    app = App(connector=SQLAlchemyPsycopg2Connector()).open(engine)

    @app.task(name="t", queueing_lock="only-one")
    def t() -> None: ...

    t.defer()
    with pytest.raises(AlreadyEnqueued):
        t.defer()
    assert db.execute("SELECT count(*) AS n FROM procq_jobs").fetchone()["n"] == 1
    app.close()


def test_json_loads_decodes_job_arguments_read_back(engine: Engine, db: Any) -> None:
    def loads(raw: str | bytes) -> Any:
        return {"decoded": json.loads(raw)}

    app = App(connector=SQLAlchemyPsycopg2Connector(json_loads=loads)).open(engine)

    @app.task(name="t")
    def t(n: int) -> None: ...

    job_id = t.defer(n=7)
    assert app.job_manager.get_job(job_id).args == {"decoded": {"n": 7}}
    app.close()
    # the application's own queries on the same engine keep the default decoding
    with engine.connect() as conn:
        assert conn.execute(text("SELECT args FROM procq_jobs")).scalar() == {"n": 7}


def test_connection_killed_by_the_server_is_replaced(engine: Engine, db: Any) -> None:
    app = App(connector=SQLAlchemyPsycopg2Connector()).open(engine)

    @app.task(name="t")
    def t() -> None: ...

    t.defer()
    db.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "  # wait until gone
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    job_id = t.defer()
    assert status_of(db, job_id) == "todo"
    app.close()


def test_exhausted_engine_pool_is_a_connector_error(db_url: str, db: Any) -> None:
    engine = create_engine(
        sqlalchemy_url(db_url, "psycopg2"), pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    app = App(connector=SQLAlchemyPsycopg2Connector()).open(engine)

    @app.task(name="t")
    def t() -> None: ...

    with engine.connect(), pytest.raises(ConnectorError, match="pool_size/max_overflow"):
        t.defer()  # the application holds the engine's only connection
    assert status_of(db, t.defer()) == "todo"  # and once it is back, deferring works
    app.close()
    engine.dispose()


def test_engine_on_another_dialect_is_refused_naming_the_supported_ones() -> None:
    sqlite = create_engine("sqlite://")
    with pytest.raises(WrongConnector) as info:
        App(connector=SQLAlchemyPsycopg2Connector()).open(sqlite)
    message = str(info.value)
    assert "sqlite+pysqlite" in message
    assert "postgresql+psycopg2://" in message and "postgresql+psycopg://" in message
    sqlite.dispose()


async def test_async_engine_is_refused_with_what_to_do(db_url: str) -> None:
    async_engine = create_async_engine(sqlalchemy_url(db_url, "psycopg"))
    with pytest.raises(WrongConnector, match="AsyncSession with defer_async"):
        App(connector=SQLAlchemyPsycopg2Connector()).open(async_engine)
    await async_engine.dispose()


def test_non_engine_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="takes a SQLAlchemy Engine"):
        App(connector=SQLAlchemyPsycopg2Connector()).open("postgresql://x")


def test_defer_before_open_says_the_app_is_not_open() -> None:
    app = App(connector=SQLAlchemyPsycopg2Connector())

    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(AppNotOpen):
        t.defer()


def test_password_never_shown_in_repr_or_errors(server_url: str) -> None:
    url = f"postgresql://someone:{SECRET}@127.0.0.1:1/nowhere"
    connector = SQLAlchemyPsycopg2Connector(dsn=url, pool_size=1)
    assert SECRET not in repr(connector)
    assert "***" in repr(connector)
    app = App(connector=connector)

    @app.task(name="t")
    def t() -> None: ...

    with app.open():
        assert SECRET not in repr(connector)
        assert SECRET not in repr(app)
        with pytest.raises(ConnectorError) as info:
            t.defer()
    assert SECRET not in str(info.value)
    assert SECRET not in repr(connector.get_worker_connector())


def test_bad_engine_option_is_a_connector_error(db_url: str) -> None:
    connector = SQLAlchemyPsycopg2Connector(dsn=db_url, no_such_option=1)
    with pytest.raises(ConnectorError, match="no_such_option"):
        App(connector=connector).open()


def test_non_postgresql_dsn_is_refused_without_the_password() -> None:
    connector = SQLAlchemyPsycopg2Connector(dsn=f"mysql://u:{SECRET}@h/db")
    with pytest.raises(ConnectorError) as info:
        App(connector=connector).open()
    assert SECRET not in str(info.value)
    assert "not a PostgreSQL URL" in str(info.value)


# -- the paired worker connector ----------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_worker_connector_carries_every_connection_parameter(driver: str) -> None:
    url = (
        f"postgresql+{driver}://alice:{SECRET}@db.example.org:6543/shop"
        "?sslmode=require&application_name=shop-web"
    )
    engine = create_engine(url)
    connector = SQLAlchemyPsycopg2Connector()
    connector.open(engine)  # no connection is made until a statement runs
    worker = connector.get_worker_connector()
    assert isinstance(worker, PsycopgConnector)
    assert worker.kwargs == {
        "host": "db.example.org",
        "port": 6543,
        "user": "alice",
        "password": SECRET,
        "dbname": "shop",
        "sslmode": "require",
        "application_name": "shop-web",
    }
    assert connector.get_worker_connector() is worker  # cached
    assert SECRET not in repr(worker)
    connector.close()
    engine.dispose()


@pytest.mark.parametrize("driver", DRIVERS)
def test_worker_connector_keeps_a_unix_socket_host(driver: str) -> None:
    engine = create_engine(f"postgresql+{driver}://bob@/shop?host=/run/pg&port=5444")
    connector = SQLAlchemyPsycopg2Connector()
    connector.open(engine)
    kwargs = connector.get_worker_connector().kwargs
    assert (kwargs["host"], str(kwargs["port"]), kwargs["dbname"]) == ("/run/pg", "5444", "shop")
    connector.close()
    engine.dispose()


def test_worker_connector_from_dsn_and_connect_args_without_an_engine() -> None:
    connector = SQLAlchemyPsycopg2Connector(
        dsn="postgresql://carol:pw@h/db", connect_args={"application_name": "jobs"}
    )
    kwargs = connector.get_worker_connector().kwargs
    assert kwargs == {
        "host": "h",
        "user": "carol",
        "password": "pw",
        "dbname": "db",
        "application_name": "jobs",
    }


@pytest.fixture
def password_role(db_url: str, db: Any) -> Iterator[tuple[str, str]]:
    """A login role with a password and the rights a worker needs on the procq tables."""
    role = f"procq_role_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(role)
    db.execute(sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {}").format(ident, SECRET))
    db.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(ident))
    db.execute(sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {}").format(ident))
    yield role, SECRET
    db.execute(sql.SQL("DROP OWNED BY {}").format(ident))
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
    db.execute(sql.SQL("DROP ROLE {}").format(ident))


def role_url(db_url: str, role: str, password: str, driver: str) -> str:
    params = conninfo_kwargs(db_url)
    host = params.get("host", "")
    location = f"?host={host}" if host.startswith("/") else ""
    netloc = (
        "" if host.startswith("/") else host + (f":{params['port']}" if "port" in params else "")
    )
    return f"postgresql+{driver}://{role}:{password}@{netloc}/{params['dbname']}{location}"


@pytest.mark.parametrize("driver", DRIVERS)
def test_run_worker_uses_the_pair_as_a_password_protected_role(
    driver: str, db_url: str, db: Any, password_role: tuple[str, str]
) -> None:
    role, password = password_role
    engine = create_engine(role_url(db_url, role, password, driver))
    app = App(connector=SQLAlchemyPsycopg2Connector()).open(engine)
    seen: list[str] = []

    @app.task(name="who")
    def who() -> None:
        seen.append("ran")

    job_id = who.defer()
    worker = app.connector.get_worker_connector()  # type: ignore[union-attr]
    assert (worker.kwargs["user"], worker.kwargs["password"]) == (role, password)
    with psycopg.connect(worker.conninfo, **worker.kwargs) as conn:
        assert conn.info.user == role and conn.info.password == password

    app.run_worker(wait=False, install_signal_handlers=False)

    assert seen == ["ran"]
    row = db.execute("SELECT status, worker_id FROM procq_jobs WHERE id = %s", (job_id,))
    assert row.fetchone()["status"] == "succeeded"
    owner = db.execute("SELECT count(*) AS n FROM procq_workers").fetchone()
    assert owner["n"] == 0  # the worker unregistered through the pair
    app.close()
    engine.dispose()


async def test_run_worker_async_on_the_sqlalchemy_app(engine: Engine, db: Any) -> None:
    app = App(connector=SQLAlchemyPsycopg2Connector()).open(engine)
    done: list[int] = []

    @app.task(name="add")
    async def add(n: int) -> None:
        done.append(n)

    ids = add.batch_defer({"n": 1}, {"n": 2})
    await app.run_worker_async(wait=False, install_signal_handlers=False)
    assert sorted(done) == [1, 2]
    statuses = [status_of(db, i) for i in ids]
    assert statuses == ["succeeded", "succeeded"]
    app.close()
