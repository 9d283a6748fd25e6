"""SQLAlchemy integration: deferring inside an application's own session or connection.

`task.configure(session=s).defer(...)` runs the INSERT on `s`'s connection, inside its
transaction, and never commits or rolls back: the job is committed with the business
rows or vanishes with them. A job with a queueing lock is inserted inside a SAVEPOINT so
that `AlreadyEnqueued` leaves the session usable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_scoped_session
from sqlalchemy.orm import Session, scoped_session

from ..connectors.base import Params, Row, translate_error


@contextmanager
def wrap_exceptions() -> Iterator[None]:
    """SQLAlchemy's DBAPIError (psycopg2 or psycopg 3 inside) to procq_sqla's errors."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        diag = getattr(orig, "diag", None)
        constraint = getattr(diag, "constraint_name", None)
        raise translate_error(orig or exc, sqlstate=sqlstate, constraint=constraint) from exc


def _needs_savepoint(params: Params) -> bool:
    lock = params.get("queueing_lock")
    locks = params.get("queueing_locks")
    return lock is not None or bool(locks and any(x is not None for x in locks))


class SessionExecutor:
    """Runs procq_sqla's queries on a Session's / Connection's current transaction."""

    def __init__(self, target: Session | scoped_session[Any] | Connection) -> None:
        self.target = target

    def _connection(self) -> Connection:
        if isinstance(self.target, Connection):
            return self.target
        return self.target.connection()

    def fetch_all(self, query: str, params: Params) -> list[Row]:
        connection = self._connection()
        with wrap_exceptions():
            if _needs_savepoint(params):
                with connection.begin_nested():
                    result = connection.exec_driver_sql(query, dict(params))
                    return [dict(row._mapping) for row in result]
            result = connection.exec_driver_sql(query, dict(params))
            return [dict(row._mapping) for row in result]

    def fetch_one(self, query: str, params: Params) -> Row | None:
        rows = self.fetch_all(query, params)
        return rows[0] if rows else None


class AsyncSessionExecutor:
    """The same for SQLAlchemy's asyncio `AsyncSession` / `AsyncConnection`."""

    def __init__(self, target: AsyncSession | async_scoped_session[Any] | AsyncConnection) -> None:
        self.target = target

    async def _connection(self) -> AsyncConnection:
        if isinstance(self.target, AsyncConnection):
            return self.target
        return await self.target.connection()

    async def fetch_all_async(self, query: str, params: Params) -> list[Row]:
        connection = await self._connection()
        with wrap_exceptions():
            if _needs_savepoint(params):
                async with connection.begin_nested():
                    result = await connection.exec_driver_sql(query, dict(params))
                    return [dict(row._mapping) for row in result]
            result = await connection.exec_driver_sql(query, dict(params))
            return [dict(row._mapping) for row in result]

    async def fetch_one_async(self, query: str, params: Params) -> Row | None:
        rows = await self.fetch_all_async(query, params)
        return rows[0] if rows else None


def session_executor(session: Any) -> SessionExecutor:
    if isinstance(session, Session | scoped_session | Connection):
        return SessionExecutor(session)
    if isinstance(session, AsyncSession | async_scoped_session | AsyncConnection):
        raise TypeError(
            "an AsyncSession / AsyncConnection needs `await ...defer_async()`, not defer()"
        )
    raise TypeError(
        "session= takes a SQLAlchemy Session, scoped_session or Connection "
        f"(or an AsyncSession with defer_async), not {type(session).__name__}"
    )


def async_session_executor(session: Any) -> AsyncSessionExecutor:
    if isinstance(session, AsyncSession | async_scoped_session | AsyncConnection):
        return AsyncSessionExecutor(session)
    raise TypeError(
        "defer_async(session=...) takes a SQLAlchemy AsyncSession or AsyncConnection, "
        f"not {type(session).__name__}"
    )
