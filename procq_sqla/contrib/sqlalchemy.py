"""SQLAlchemy integration: the engine-shared connector and deferring inside sessions.

`SQLAlchemyPsycopg2Connector` borrows connections from the application's own `Engine`
(`app.open(engine)`), so deferring never opens a connection of its own, and derives the
paired `PsycopgConnector` the worker runs on from that engine's URL.
`task.configure(session=s).defer(...)` runs the INSERT on `s`'s connection, inside its
transaction, and never commits or rolls back: the job is committed with the business
rows or vanishes with them. A job with a queueing lock is inserted inside a SAVEPOINT so
that `AlreadyEnqueued` leaves the session usable.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.types.json import set_json_loads
from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_scoped_session
from sqlalchemy.orm import Session, scoped_session

from ..connectors.base import (
    ALL_DEAD,
    RETRYABLE_SQLSTATES,
    JSONDumps,
    JSONLoads,
    Params,
    Row,
    SyncQueryMethods,
    default_json_dumps,
    fetch_result,
    has_unread_input,
    is_idle,
    translate_error,
)
from ..connectors.prepared import protocol_args, run_prepared, shaped
from ..connectors.psycopg import PsycopgConnector
from ..connectors.spare import Spare
from ..database import mask_password, sqlalchemy_url
from ..exceptions import AppNotOpen, ConnectorError, WrongConnector


@contextmanager
def wrap_exceptions() -> Iterator[None]:
    """SQLAlchemy's DBAPIError (psycopg2 or psycopg 3 inside) to procq_sqla's errors."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        raise _translate(exc.orig or exc) from exc


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
            connection = self.target
        else:
            connection = self.target.connection()
        check_dialect(connection.dialect, "defer inside a session")
        return connection

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

    def fetch_value(self, query: str, params: Params) -> Any:
        row = self.fetch_one(query, params)
        return None if row is None else next(iter(row.values()))


class AsyncSessionExecutor:
    """The same for SQLAlchemy's asyncio `AsyncSession` / `AsyncConnection`."""

    def __init__(self, target: AsyncSession | async_scoped_session[Any] | AsyncConnection) -> None:
        self.target = target

    async def _connection(self) -> AsyncConnection:
        if isinstance(self.target, AsyncConnection):
            connection = self.target
        else:
            connection = await self.target.connection()
        check_dialect(connection.dialect, "defer inside a session")
        return connection

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

    async def fetch_value_async(self, query: str, params: Params) -> Any:
        row = await self.fetch_one_async(query, params)
        return None if row is None else next(iter(row.values()))


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


# -- the engine-shared connector ----------------------------------------------------------

MAX_DISCARDS = 64  # dead idle connections skipped per statement (a restart kills all)
SUPPORTED_DRIVERS = ("psycopg2", "psycopg")
SUPPORTED_DIALECTS = "postgresql+psycopg2:// or postgresql+psycopg://"


def check_engine(engine: Any) -> Engine:
    """The engine itself, or a clear error for anything we cannot borrow connections from."""
    if isinstance(engine, AsyncEngine):
        raise WrongConnector(
            "app.open() needs a synchronous Engine, not an AsyncEngine: open the app on "
            "create_engine(...) and defer through an AsyncSession with defer_async()"
        )
    if not isinstance(engine, Engine):
        raise TypeError(
            f"app.open() takes a SQLAlchemy Engine (or nothing), not {type(engine).__name__}"
        )
    check_dialect(engine.dialect, "use an engine")
    return engine


def check_dialect(dialect: Dialect, what: str) -> None:
    """Our SQL (`%(name)s` placeholders, PostgreSQL) needs psycopg2 or psycopg 3."""
    if dialect.name != "postgresql" or dialect.driver not in SUPPORTED_DRIVERS:
        raise WrongConnector(
            f"procq_sqla cannot {what} on {dialect.name}+{dialect.driver}: "
            f"use a PostgreSQL engine on {SUPPORTED_DIALECTS}"
        )


def libpq_params(engine: Engine, connect_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The libpq keywords the engine connects with (URL + connect_args), for psycopg 3."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    params: dict[str, Any] = {}
    if cargs and isinstance(cargs[0], str) and cargs[0]:
        params["conninfo"] = cargs[0]
    for key, value in {**cparams, **(connect_args or {})}.items():
        if isinstance(value, str | int) and not isinstance(value, bool):
            params[key] = value
    return params


class SQLAlchemyPsycopg2Connector(SyncQueryMethods):
    """Sync connector that borrows connections from a SQLAlchemy engine's pool.

    `app.open(engine)` lends it the application's engine (psycopg2 or psycopg 3 dialect);
    `app.open()` makes it create its own from `dsn` and `engine_kwargs` (disposed at
    close). Each statement runs in autocommit on a pooled connection: one round trip, no
    BEGIN/COMMIT. `get_worker_connector()` is the paired `PsycopgConnector`.
    """

    driver = "psycopg2"

    def __init__(
        self,
        *,
        dsn: str = "",
        json_dumps: JSONDumps | None = None,
        json_loads: JSONLoads | None = None,
        **engine_kwargs: Any,
    ) -> None:
        self.dsn = dsn
        self.json_dumps: JSONDumps = json_dumps or default_json_dumps
        self.json_loads = json_loads
        self.engine_kwargs = engine_kwargs
        self._engine: Engine | None = None
        self._owns_engine = False
        self._lock = threading.Lock()
        self._worker: tuple[str, PsycopgConnector] | None = None
        self._spare: Spare[EngineLease] = Spare(_put_back, _discard, type(self).__name__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._safe_url()!r})"

    def _safe_url(self) -> str:
        if self._engine is not None:
            return self._engine.url.render_as_string(hide_password=True)
        return mask_password(self.sqlalchemy_url())

    def sqlalchemy_url(self) -> str:
        """The URL this connector's own engine uses (the `dsn`, on this class's driver)."""
        return sqlalchemy_url(self.dsn, self.driver)

    # -- opening ---------------------------------------------------------------------------

    def open(self, engine: Engine | None = None) -> None:
        """Borrow `engine` (never disposed here), or create our own engine from `dsn`."""
        with self._lock:
            if engine is not None:
                engine = check_engine(engine)
            if self._engine is not None:
                if engine is None or engine is self._engine:
                    return
                raise ConnectorError(
                    "this connector is already open on another engine: close() it first"
                )
            if engine is None:
                engine = check_engine(self._create_engine())
                self._owns_engine = True
            else:
                self._owns_engine = False
            self._engine = engine

    def _create_engine(self) -> Engine:
        try:
            return create_engine(self.sqlalchemy_url(), **self.engine_kwargs)
        except TypeError as exc:
            raise ConnectorError(f"invalid engine option: {exc}") from exc
        except sa_exc.ArgumentError as exc:
            raise ConnectorError(mask_password(str(exc))) from exc

    def close(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
        self._spare.release()
        if engine is None:
            return
        if self._owns_engine:
            engine.dispose()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise AppNotOpen()
        return self._engine

    # -- running statements ------------------------------------------------------------------

    def _run(self, query: str, params: Params, fetch: str) -> Any:
        engine = self.engine
        for attempt in (1, 2):
            lease, since = self._checkout(engine)
            proxy, dbapi, cursor = lease[1], lease[2], lease[4]
            try:
                return _statement(dbapi, cursor, query, params, fetch)
            except engine.dialect.loaded_dbapi.Error as exc:
                gone = engine.dialect.is_disconnect(exc, dbapi, cursor)
                if gone:
                    proxy.invalidate(exc)
                if gone and attempt == 1 and _sqlstate(exc) in RETRYABLE_SQLSTATES:
                    continue
                raise _translate(exc) from exc
            finally:
                self._spare.check_in(lease, since, is_idle(dbapi))
        raise AssertionError("unreachable")

    def _checkout(self, engine: Engine) -> tuple[EngineLease, float]:
        """A pooled DBAPI connection switched to autocommit (with what `_put_back`
        needs to restore it), and when it left the pool: the spare one of the last
        statement if there is one, else one from the engine's pool.

        Autocommit makes a defer one round trip (no BEGIN/COMMIT). Flipping the driver's
        own `autocommit` attribute costs nothing, where SQLAlchemy's
        `isolation_level="AUTOCOMMIT"` option costs a round trip per checkout on psycopg2.
        Connections the server closed while they sat idle are skipped unused.
        """
        spare = self._spare.take(lambda lease: lease[0] is engine and not _is_dead(lease[2]))
        if spare is not None:
            return spare
        for _ in range(MAX_DISCARDS):
            try:
                proxy = engine.raw_connection()
            except engine.dialect.loaded_dbapi.Error as exc:  # the pool could not connect
                raise _translate(exc) from exc
            except sa_exc.TimeoutError as exc:
                raise ConnectorError(
                    "no connection became available in time from the engine's pool: "
                    "raise its pool_size/max_overflow or pool_timeout"
                ) from exc
            dbapi = proxy.dbapi_connection
            if dbapi is None or _is_dead(dbapi):
                proxy.invalidate()  # the pool replaces it; no statement was sent
                proxy.close()
                continue
            previous = bool(dbapi.autocommit)
            dbapi.autocommit = True
            cursor = dbapi.cursor()
            if self.json_loads is not None:
                _set_json_loads(dbapi, cursor, self.json_loads)
            return (engine, proxy, dbapi, previous, cursor), time.monotonic()
        raise ConnectorError(ALL_DEAD)

    # -- the paired async connector ----------------------------------------------------------

    def worker_params(self) -> dict[str, Any]:
        """libpq keywords for the worker: from the engine in use, else from `dsn`."""
        if self._engine is not None:
            connect_args = self.engine_kwargs.get("connect_args") if self._owns_engine else None
            return libpq_params(self._engine, connect_args)
        engine = check_engine(create_engine(self.sqlalchemy_url()))
        try:
            return libpq_params(engine, self.engine_kwargs.get("connect_args"))
        finally:
            engine.dispose()

    def get_worker_connector(self) -> PsycopgConnector:
        """A `PsycopgConnector` on the same database (cached while that stays the same)."""
        params = self.worker_params()
        key = repr(sorted(params.items()))
        if self._worker is not None and self._worker[0] == key:
            return self._worker[1]
        conninfo = params.pop("conninfo", "")
        worker = PsycopgConnector(
            conninfo=conninfo,
            kwargs=params,
            json_dumps=self.json_dumps,
            json_loads=self.json_loads,
        )
        self._worker = (key, worker)
        return worker


class SQLAlchemyPsycopgConnector(SQLAlchemyPsycopg2Connector):
    """The same connector; its own engine (without `app.open(engine)`) uses psycopg 3.

    Both classes borrow an engine of either dialect; they differ only in the driver of
    the engine they create from `dsn`.
    """

    driver = "psycopg"


# The engine, the pool's proxy, its DBAPI connection, that one's own autocommit, and the
# cursor our statements run on while it is out of the pool.
EngineLease = tuple[Engine, Any, Any, bool, Any]


def _put_back(lease: EngineLease) -> None:
    """Restore the connection's autocommit and return it to the engine's pool."""
    _, proxy, dbapi, previous, cursor = lease
    if not dbapi.closed:
        cursor.close()
        dbapi.autocommit = previous
    proxy.close()


def _discard(lease: EngineLease) -> None:
    """Invalidate a connection that must not be used again: the pool replaces it."""
    proxy = lease[1]
    proxy.invalidate()
    proxy.close()


def _is_dead(dbapi: Any) -> bool:
    """Closed, or the server's goodbye already waits on the socket (no round trip)."""
    return bool(dbapi.closed) or has_unread_input(dbapi.fileno())


@functools.cache
def _psycopg2_execute() -> Callable[[Any, Any, str, Params], None]:
    """`connectors.psycopg2.execute`, imported on first use (psycopg2 is optional)."""
    from ..connectors.psycopg2 import execute

    return execute


def _statement(dbapi: Any, cursor: Any, query: str, params: Params, fetch: str) -> Any:
    """One statement in autocommit on a borrowed connection of either driver: psycopg2
    runs the hot queries as server-side prepared statements (`connectors.psycopg2`);
    psycopg 3 prepares by itself, and runs the hot queries below its cursor
    (`connectors.prepared`)."""
    if isinstance(dbapi, psycopg.Connection):
        if fetch != "none" and (hot := protocol_args(dbapi, query, params)) is not None:
            return shaped(run_prepared(dbapi, *hot), hot[0], fetch, cursor)
        cursor.execute(query, params)
    else:
        _psycopg2_execute()(dbapi, cursor, query, params)
    return fetch_result(cursor, fetch)


def _sqlstate(exc: BaseException) -> str | None:
    """SQLSTATE of a psycopg 3 (`sqlstate`) or psycopg2 (`pgcode`) error."""
    return getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)


def _translate(exc: BaseException) -> Exception:
    """A driver error (psycopg2 or psycopg 3) as procq_sqla's exception."""
    constraint = getattr(getattr(exc, "diag", None), "constraint_name", None)
    return translate_error(exc, sqlstate=_sqlstate(exc), constraint=constraint)


def _set_json_loads(dbapi: Any, cursor: Any, loads: JSONLoads) -> None:
    """Decode JSON with `loads` on this cursor only: the engine's other users keep theirs."""
    if isinstance(dbapi, psycopg.Connection):
        set_json_loads(loads, cursor)
        return
    import psycopg2.extras

    psycopg2.extras.register_default_json(cursor, loads=loads)
    psycopg2.extras.register_default_jsonb(cursor, loads=loads)
