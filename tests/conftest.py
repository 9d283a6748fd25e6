"""Shared fixtures: one real PostgreSQL per run, one migrated template, a copy per test.

The server is `PROCQ_DATABASE_URL`, else the `PG*` variables, else an embedded
PostgreSQL started for this run (never a mock, never a silent skip). The template
database is migrated once with Alembic; each test gets `CREATE DATABASE ... TEMPLATE`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from procq_sqla import App, PsycopgConnector, SyncPsycopgConnector, migrations
from procq_sqla.database import database_url, sqlalchemy_url, with_dbname


def _admin(url: str) -> psycopg.Connection[dict[str, object]]:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


@pytest.fixture(scope="session")
def server_url() -> str:
    """libpq URL of the test server's maintenance database ("" = the PG* variables)."""
    url = database_url()
    embedded = not os.environ.get("PROCQ_DATABASE_URL") and url.startswith(
        "postgresql://postgres:@"
    )
    if embedded:  # our own throwaway server: trade durability for test speed
        with _admin(url) as conn:
            conn.execute("ALTER SYSTEM SET fsync = off")
            conn.execute("ALTER SYSTEM SET synchronous_commit = off")
            conn.execute("ALTER SYSTEM SET full_page_writes = off")
            conn.execute("SELECT pg_reload_conf()")
    return url


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    with _admin(server_url) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        conn.execute(query)
    return with_dbname(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with _admin(server_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    """A database migrated to head once per run; tests get copies of it."""
    name = f"procq_template_{os.getpid()}"
    drop_database(server_url, name)
    url = create_database(server_url, name)
    migrations.upgrade(sqlalchemy_url(url))
    yield name
    drop_database(server_url, name)


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    """libpq URL of a fresh, migrated database for this test alone."""
    name = f"procq_test_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name, template=template_db)
    yield url
    drop_database(server_url, name)


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    """libpq URL of a fresh database with no procq schema at all."""
    name = f"procq_empty_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name)
    yield url
    drop_database(server_url, name)


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection[dict[str, object]]]:
    """A plain autocommit connection to the test database, for assertions."""
    with _admin(db_url) as conn:
        yield conn


@pytest.fixture
def sync_app(db_url: str) -> Iterator[App]:
    """An open app on SyncPsycopgConnector (defers only)."""
    app = App(connector=SyncPsycopgConnector(conninfo=db_url))
    with app.open():
        yield app


@pytest.fixture
async def async_app(db_url: str) -> AsyncIterator[App]:
    """An open app on PsycopgConnector (defers and runs the worker)."""
    app = App(connector=PsycopgConnector(conninfo=db_url))
    async with app.open_async():
        yield app
