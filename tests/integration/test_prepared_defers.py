"""psycopg2 sends a query's text every time; the psycopg2-based connectors run defer_job
as a server-side prepared statement instead, and recover when it disappears."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from procq_sqla import App
from procq_sqla.connectors.prepared import PREPARED_QUERIES, prepared_query
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

    name = PREPARED_QUERIES[queries["defer_job"]].name
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
