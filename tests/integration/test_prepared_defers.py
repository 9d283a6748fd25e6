"""The hot defer statements run as server-side prepared statements on every driver:
EXECUTE on psycopg2, a protocol-level prepared statement below psycopg 3's cursor. They
recover when the statement disappears, and fall back to the cursor where text parameters
or preparing would be wrong."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from procq_sqla import App, ConnectorError, JobContext, PsycopgConnector, SyncPsycopgConnector
from procq_sqla.connectors.prepared import PREPARED_QUERIES, prepared_query, text_array
from procq_sqla.sql import queries

Conn = psycopg.Connection[dict[str, Any]]


def test_prepared_query_numbers_each_named_parameter_once() -> None:
    prepared = prepared_query("x", "SELECT %(a)s, %(b)s, %(a)s, 100 %% 7")
    assert prepared.prepare.endswith("AS SELECT $1, $2, $1, 100 % 7")
    assert prepared.execute == f"EXECUTE {prepared.name}(%s, %s)"
    assert prepared.args({"b": 2, "a": 1}) == (1, 2)
    assert prepared_query("x", "SELECT 1").name != prepared.name  # the text is in the name


@pytest.fixture(params=["psycopg2", "sqlalchemy"])
def psycopg2_app(request: pytest.FixtureRequest, db_url: str) -> Any:
    pytest.importorskip("psycopg2")
    if request.param == "psycopg2":
        from procq_sqla.connectors.psycopg2 import Psycopg2Connector

        app = App(connector=Psycopg2Connector(dsn=db_url, maxconn=1)).open()
        yield app
        app.close()
        return
    from sqlalchemy import create_engine

    from procq_sqla.contrib.sqlalchemy import SQLAlchemyPsycopg2Connector
    from procq_sqla.database import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(db_url, "psycopg2"), pool_size=1, max_overflow=0)
    app = App(connector=SQLAlchemyPsycopg2Connector()).open(engine)
    yield app
    app.close()
    engine.dispose()


def test_defers_run_prepared_and_survive_deallocate(psycopg2_app: App, db: Conn) -> None:
    @psycopg2_app.task(name="t")
    def t(i: int) -> None: ...

    name = PREPARED_QUERIES[queries["defer_plain_job"]].name
    first = t.defer(i=1)
    backend = db.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND query LIKE %s",
        (f"EXECUTE {name}%",),
    ).fetchall()
    assert len(backend) == 1  # the defer ran as EXECUTE of our prepared statement

    t.defer(i=2)
    psycopg2_app.sync_connector().execute("DEALLOCATE ALL", {})  # a pooler's DISCARD ALL
    third = t.defer(i=3)
    fourth = t.defer(i=4)

    rows = db.execute("SELECT id, args FROM procq_jobs ORDER BY id").fetchall()
    assert [r["args"]["i"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["id"] == first and rows[2]["id"] == third and rows[3]["id"] == fourth


def _names_on_connection(app: App) -> set[str]:
    """The prepared statements of the connection the last statement ran on (the spare
    connection, which the next statement takes)."""
    rows = app.sync_connector().fetch_all("SELECT name FROM pg_prepared_statements", {})
    return {r["name"] for r in rows if r["name"].startswith("procq_")}


def _sqlalchemy_psycopg3(db_url: str) -> Iterator[App]:
    from sqlalchemy import create_engine

    from procq_sqla.contrib.sqlalchemy import SQLAlchemyPsycopgConnector
    from procq_sqla.database import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(db_url, "psycopg"), pool_size=1, max_overflow=0)
    with App(connector=SQLAlchemyPsycopgConnector()).open(engine) as app:
        yield app
    engine.dispose()


def _sync_psycopg(db_url: str) -> Iterator[App]:
    with App(connector=SyncPsycopgConnector(conninfo=db_url, max_size=1)).open() as app:
        yield app


@pytest.fixture(params=["sync_psycopg", "sqlalchemy_psycopg3"])
def psycopg3_app(request: pytest.FixtureRequest, db_url: str) -> Iterator[App]:
    opener: Callable[[str], Iterator[App]] = (
        _sync_psycopg if request.param == "sync_psycopg" else _sqlalchemy_psycopg3
    )
    yield from opener(db_url)


def test_psycopg3_defers_run_as_protocol_prepared_statements(psycopg3_app: App, db: Conn) -> None:
    @psycopg3_app.task(name="t")
    def t(i: int) -> None: ...

    ids = [t.defer(i=1), t.configure(priority=5).defer(i=2)]
    assert _names_on_connection(psycopg3_app) == {
        PREPARED_QUERIES[queries["defer_plain_job"]].name,
        PREPARED_QUERIES[queries["defer_job"]].name,
    }
    psycopg3_app.sync_connector().execute("DEALLOCATE ALL", {})  # a pooler's DISCARD ALL
    ids.append(t.defer(i=3))
    ids.append(t.configure(priority=5).defer(i=4))

    rows = db.execute("SELECT id, args, priority FROM procq_jobs ORDER BY id").fetchall()
    assert [(r["id"], r["args"]["i"], r["priority"]) for r in rows] == [
        (ids[0], 1, 0),
        (ids[1], 2, 5),
        (ids[2], 3, 0),
        (ids[3], 4, 5),
    ]


@pytest.mark.parametrize("driver", ["psycopg3", "psycopg2"])
def test_every_option_survives_the_prepared_statement(
    driver: str, db_url: str, db: Conn, request: pytest.FixtureRequest
) -> None:
    if driver == "psycopg2":
        pytest.importorskip("psycopg2")
        from procq_sqla.connectors.psycopg2 import Psycopg2Connector

        app = App(connector=Psycopg2Connector(dsn=db_url, maxconn=1)).open()
    else:
        app = App(connector=SyncPsycopgConnector(conninfo=db_url, max_size=1)).open()
    request.addfinalizer(app.close)

    @app.task(name="t")
    def t(text: str) -> None: ...

    when = dt.datetime(2031, 2, 3, 4, 5, 6, 789012, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    job_id = t.configure(
        queue="q-é", priority=-3, lock="l'1", queueing_lock="ql\\2", schedule_at=when
    ).defer(text="naïve ' \" \\ ☃")
    row = db.execute("SELECT * FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    assert (row["queue"], row["priority"], row["lock"], row["queueing_lock"]) == (
        "q-é",
        -3,
        "l'1",
        "ql\\2",
    )
    assert row["scheduled_at"] == when
    assert row["args"] == {"text": "naïve ' \" \\ ☃"}


def test_a_pool_told_not_to_prepare_runs_defers_unprepared(db_url: str, db: Conn) -> None:
    connector = SyncPsycopgConnector(
        conninfo=db_url, kwargs={"prepare_threshold": None}, max_size=1
    )
    with App(connector=connector).open() as app:

        @app.task(name="t")
        def t(i: int) -> None: ...

        ids = [t.defer(i=i) for i in range(8)]
        assert _names_on_connection(app) == set()  # PgBouncer in transaction mode stays safe
    assert [r["id"] for r in db.execute("SELECT id FROM procq_jobs ORDER BY id")] == ids


def test_a_non_utf8_connection_defers_through_the_cursor(db_url: str, db: Conn) -> None:
    connector = SyncPsycopgConnector(
        conninfo=db_url, kwargs={"client_encoding": "LATIN1"}, max_size=1
    )
    with App(connector=connector).open() as app:

        @app.task(name="t", queue="file-é")
        def t(word: str) -> None: ...

        job_id = t.defer(word="café")
        assert _names_on_connection(app) == set()
    row = db.execute("SELECT queue, args FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row == {"queue": "file-é", "args": {"word": "café"}}


def test_a_nul_reaching_the_hot_statement_is_refused_not_truncated(sync_app: App, db: Conn) -> None:
    # options are checked before any I/O; this is the connector's own guard behind them
    params = {"queue": "a\x00b", "task_name": "t", "args": "{}"}
    with pytest.raises(ConnectorError, match="NUL"):
        sync_app.sync_connector().fetch_value(queries["defer_plain_job"], params)
    assert db.execute("SELECT count(*) AS n FROM procq_jobs").fetchone() == {"n": 0}


async def test_defer_async_runs_as_a_protocol_prepared_statement(db_url: str, db: Conn) -> None:
    app = App(connector=PsycopgConnector(conninfo=db_url, max_size=1))
    async with app.open_async():

        @app.task(name="t")
        async def t(i: int) -> None: ...

        first = await t.defer_async(i=1)
        rows = await app.async_connector().fetch_all_async(
            "SELECT name FROM pg_prepared_statements", {}
        )
        assert PREPARED_QUERIES[queries["defer_plain_job"]].name in {r["name"] for r in rows}
        await app.async_connector().execute_async("DEALLOCATE ALL", {})
        second = await t.defer_async(i=2)
    assert [r["id"] for r in db.execute("SELECT id FROM procq_jobs ORDER BY id")] == [
        first,
        second,
    ]


ODD_QUEUES = ['q "quoted"', "back\\slash", "a,b", "{braces}", "NULL", " spaced ", "é"]


@pytest.mark.parametrize("values", [ODD_QUEUES, [], [""], ["plain"]])
def test_text_arrays_reach_the_server_as_the_same_list(values: list[str], db: Conn) -> None:
    literal = text_array(values)
    assert literal is not None
    row = db.execute("SELECT %s::text::text[] AS a", (literal.decode(),)).fetchone()
    assert row == {"a": values}


def test_text_arrays_refuse_what_text_format_cannot_carry() -> None:
    assert text_array(["a\x00b"]) is None
    assert text_array(["a", 1]) is None


async def test_workers_of_oddly_named_queues_claim_exactly_their_jobs(
    db_url: str, db: Conn
) -> None:
    app = App(connector=PsycopgConnector(conninfo=db_url, max_size=1))
    async with app.open_async():

        @app.task(name="t")
        async def t() -> None: ...

        ids = {queue: await t.configure(queue=queue).defer_async() for queue in ODD_QUEUES}
        other = await t.configure(queue="other").defer_async()
        # one queue (claim_jobs_in_queue), then the rest at once (claim_jobs_in_queues)
        await app.run_worker_async(queues=[ODD_QUEUES[0]], wait=False)
        assert status(db, ids[ODD_QUEUES[0]]) == "succeeded"
        assert status(db, ids[ODD_QUEUES[1]]) == "todo"
        await app.run_worker_async(queues=ODD_QUEUES[1:], wait=False)
        rows = await app.async_connector().fetch_all_async(
            "SELECT name FROM pg_prepared_statements", {}
        )

    assert {queue: status(db, job_id) for queue, job_id in ids.items()} == dict.fromkeys(
        ODD_QUEUES, "succeeded"
    )
    assert status(db, other) == "todo"
    names = {r["name"] for r in rows}
    assert PREPARED_QUERIES[queries["claim_jobs_in_queue"]].name in names
    assert PREPARED_QUERIES[queries["claim_jobs_in_queues"]].name in names


async def test_claimed_rows_are_loaded_with_the_connectors_json_loads(db_url: str) -> None:
    def loads(data: str | bytes) -> Any:
        return json.loads(data, parse_float=Decimal)

    app = App(connector=PsycopgConnector(conninfo=db_url, json_loads=loads))
    seen: list[Any] = []
    async with app.open_async():

        @app.task(name="t", pass_context=True)
        async def t(context: JobContext, price: Any) -> None:
            seen.append((price, context.job.scheduled_at, context.job.created_at))

        await t.defer_async(price=1.25)
        await app.run_worker_async(wait=False)

    ((price, scheduled_at, created_at),) = seen
    assert price == Decimal("1.25") and isinstance(price, Decimal)
    assert scheduled_at is None
    assert isinstance(created_at, dt.datetime) and created_at.tzinfo is not None


def status(db: Conn, job_id: int) -> str:
    row = db.execute("SELECT status FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row["status"])
