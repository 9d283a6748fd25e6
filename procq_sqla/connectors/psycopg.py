"""`PsycopgConnector`: asyncio psycopg 3 over a `psycopg_pool.AsyncConnectionPool`.

It defers, reads jobs and LISTENs, so it runs the worker. Our own connections are
autocommit (one round trip per statement, no BEGIN/COMMIT); rows are read through dict
cursors, so a pool handed to `open_async(pool)` works whatever its connection settings.
Connections are not checked with a query on checkout (a round trip per operation);
instead one whose socket already holds the server's goodbye is discarded before use, and
a statement the server refused because it was terminating the connection (SQLSTATE
57P01-57P03, so the statement never ran) is run once more on a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import set_json_loads

from ..database import mask_password
from ..exceptions import AppNotOpen, ConnectorError
from .base import (
    ALL_DEAD,
    COPY_MISMATCH,
    RETRYABLE_SQLSTATES,
    AsyncQueryMethods,
    CopyPlan,
    ErrorWrapper,
    JSONDumps,
    JSONLoads,
    NotifyCallback,
    Params,
    connect_error,
    default_json_dumps,
    dsn_secrets,
    has_unread_input,
    is_idle,
    translate_error,
)
from .prepared import protocol_args, run_prepared_async, shaped
from .spare import AsyncSpare

PoolFactory = Callable[..., psycopg_pool.AsyncConnectionPool[Any]]
# A pooled connection, its pool, and the dict-row cursor our statements run on.
AsyncPoolLease = tuple[
    "psycopg_pool.AsyncConnectionPool[Any]",
    "psycopg.AsyncConnection[Any]",
    "psycopg.AsyncCursor[Any]",
]
# How many dead pooled connections one call may throw away before giving up.
MAX_DISCARDS = 32


class wrap_exceptions(ErrorWrapper):
    """The one place psycopg's and psycopg_pool's errors become procq_sqla's."""

    __slots__ = ()

    def translate(self, exc: BaseException) -> BaseException | None:
        if isinstance(exc, psycopg_pool.PoolTimeout):  # before psycopg.Error: a subclass
            return ConnectorError(
                f"no database connection became available in time ({mask_password(str(exc))}): "
                "raise the pool's max_size or timeout"
            )
        if isinstance(exc, psycopg.Error):
            return translate_error(
                exc,
                sqlstate=exc.sqlstate,
                constraint=exc.diag.constraint_name,
                secrets=self.secrets,
            )
        if isinstance(exc, psycopg_pool.PoolClosed):
            return AppNotOpen()
        return None


def is_stale_connection_error(exc: psycopg.Error) -> bool:
    """True when the statement never ran because the server was dropping the connection."""
    return exc.sqlstate in RETRYABLE_SQLSTATES


def is_dead(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """True for an idle connection the server has already closed (no round trip)."""
    if conn.closed or conn.broken:
        return True
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        return True
    return has_unread_input(fd)


def first_value(row: dict[str, Any] | None) -> Any:
    """The first column of a dict row (`fetch="value"` on the cursor path), or None."""
    return None if row is None else next(iter(row.values()))


def prepare_cursor(
    cursor: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any], json_loads: JSONLoads | None
) -> None:
    """Per-cursor JSON parsing, so it also applies on a pool we did not create."""
    if json_loads is not None:
        set_json_loads(json_loads, cursor)


async def run_statement_async(
    cur: psycopg.AsyncCursor[Any], query: str, params: Params, fetch: str
) -> Any:
    """One statement on a pooled connection's cursor, committed (or rolled back) at once
    when the connection is not in autocommit (a pool handed to `open_async(pool)`). The
    cursor lives as long as the connection stays out of the pool (see `run_statement`)."""
    conn = cur.connection
    if fetch != "none" and (hot := protocol_args(conn, query, params)) is not None:
        return shaped(await run_prepared_async(conn, *hot), hot[0], fetch, cur)
    try:
        await cur.execute(query, params)
        if fetch == "one":
            result: Any = await cur.fetchone()
        elif fetch == "all":
            result = await cur.fetchall()
        elif fetch == "value":
            result = first_value(await cur.fetchone())
        else:
            result = None
        if conn.pgconn.transaction_status != TransactionStatus.IDLE:
            await conn.commit()
        return result
    except BaseException:
        if not conn.closed and conn.pgconn.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                await conn.rollback()
        raise


def connection_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The connection keywords of our own pools: autocommit, dict rows, then the user's."""
    return {"autocommit": True, "row_factory": dict_row, **(kwargs or {})}


def pool_options(
    factory: Callable[..., Any], defaults: type[Any], pool_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Our size defaults apply to the default pool class only (a null pool wants none)."""
    base: dict[str, Any] = {"min_size": 1, "max_size": 10} if factory is defaults else {}
    return {**base, **pool_kwargs}


async def _pool_params(
    pool: psycopg_pool.AsyncConnectionPool[Any],
) -> tuple[str, dict[str, Any]]:
    """A pool's conninfo and kwargs, which psycopg_pool also accepts as (async) callables."""
    conninfo: Any = pool.conninfo
    kwargs: Any = pool.kwargs
    if callable(conninfo):
        conninfo = conninfo()
        if inspect.isawaitable(conninfo):
            conninfo = await conninfo
    if callable(kwargs):
        kwargs = kwargs()
        if inspect.isawaitable(kwargs):
            kwargs = await kwargs
    return str(conninfo), dict(kwargs or {})


def describe(name: str, conninfo: str, kwargs: dict[str, Any]) -> str:
    shown = {k: ("***" if k == "password" else v) for k, v in kwargs.items()}
    extra = f", kwargs={shown!r}" if shown else ""
    return f"{name}(conninfo={mask_password(conninfo)!r}{extra})"


class PsycopgConnector(AsyncQueryMethods):
    """asyncio connector on psycopg 3; `conninfo=`, `kwargs=`, or libpq variables.

    Every other keyword goes to the pool (`min_size=`, `max_size=`, `timeout=`, ...);
    `pool_factory=` swaps the pool class, e.g. `psycopg_pool.AsyncNullConnectionPool`.
    """

    def __init__(
        self,
        *,
        conninfo: str = "",
        kwargs: dict[str, Any] | None = None,
        pool_factory: PoolFactory = psycopg_pool.AsyncConnectionPool,
        json_dumps: JSONDumps | None = None,
        json_loads: JSONLoads | None = None,
        **pool_kwargs: Any,
    ) -> None:
        self.conninfo = conninfo
        self.kwargs = dict(kwargs or {})
        self.pool_factory = pool_factory
        self.pool_kwargs = pool_kwargs
        self.json_dumps: JSONDumps = json_dumps or default_json_dumps
        self.json_loads = json_loads
        self._secrets = dsn_secrets(conninfo, self.kwargs)
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._owns_pool = False
        self._sync: Any = None
        self._sync_lock = threading.Lock()  # def tasks ask for the twin from many threads
        self._spare: AsyncSpare[AsyncPoolLease] = AsyncSpare(_put_back, _discard)

    def __repr__(self) -> str:
        return describe("PsycopgConnector", self.conninfo, self.kwargs)

    async def open_async(self, pool: psycopg_pool.AsyncConnectionPool[Any] | None = None) -> None:
        """Open our own pool, or adopt `pool` (which we will then never close)."""
        if self._pool is not None:
            return
        if pool is not None:
            self._pool, self._owns_pool = pool, False
            return
        kwargs = connection_kwargs(self.kwargs)
        options = pool_options(
            self.pool_factory, psycopg_pool.AsyncConnectionPool, self.pool_kwargs
        )
        try:  # no I/O yet: an unknown pool option fails first
            created = self.pool_factory(self.conninfo, kwargs=kwargs, open=False, **options)
        except (TypeError, ValueError) as exc:
            raise ConnectorError(
                f"invalid pool option for PsycopgConnector ({exc}): check its keyword arguments"
            ) from exc
        try:  # one direct connection: bad parameters fail now, in libpq's own words
            probe = await psycopg.AsyncConnection.connect(self.conninfo, **kwargs)
        except psycopg.Error as exc:
            raise connect_error(exc, "PsycopgConnector", self._secrets) from exc
        await probe.close()
        with wrap_exceptions(self._secrets):
            await created.open(wait=True, timeout=options.get("timeout", 30.0))
        self._pool, self._owns_pool = created, True

    async def close_async(self) -> None:
        if self._sync is not None:
            await asyncio.to_thread(self._sync.close)
            self._sync = None
        pool, self._pool = self._pool, None
        await self._spare.release()
        if pool is not None and self._owns_pool:
            await pool.close()

    @property
    def pool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        if self._pool is None:
            raise AppNotOpen()
        return self._pool

    async def _checkout(self) -> tuple[AsyncPoolLease, float]:
        """The asyncio twin of `SyncPsycopgConnector._checkout`: the spare connection,
        or a live one from the pool with a new cursor, and when it left the pool."""
        spare = await self._spare.take(
            lambda lease: lease[0] is self._pool and not is_dead(lease[1])
        )
        if spare is not None:
            return spare
        pool = self.pool
        for _ in range(MAX_DISCARDS):
            conn = await pool.getconn()
            if not is_dead(conn):
                cur = conn.cursor(row_factory=dict_row)
                prepare_cursor(cur, self.json_loads)
                return (pool, conn, cur), time.monotonic()
            await _discard((pool, conn, None))
        raise ConnectorError(ALL_DEAD)

    async def _run(self, query: str, params: Params, fetch: str) -> Any:
        retried = False
        while True:
            with wrap_exceptions(self._secrets):
                lease, since = await self._checkout()
                try:
                    return await run_statement_async(lease[2], query, params, fetch)
                except psycopg.OperationalError as exc:
                    if not retried and is_stale_connection_error(exc):
                        retried = True
                        continue
                    raise
                finally:
                    await self._spare.check_in(lease, since, is_idle(lease[1]))

    async def copy_in_async(self, plan: CopyPlan) -> list[Any]:
        """Run a `CopyPlan` (big batch defers) on one pooled connection."""
        with wrap_exceptions(self._secrets):
            lease, since = await self._checkout()
            conn = lease[1]
            try:
                async with conn.transaction():  # a mismatch below rolls the COPY back
                    async with conn.cursor(row_factory=dict_row) as cur:
                        await cur.execute(plan.before, plan.params)
                        first = await cur.fetchone() or {}
                        async with cur.copy(plan.copy) as copy:
                            for chunk in plan.data:
                                await copy.write(chunk)
                    async with conn.cursor(row_factory=tuple_row) as ids:  # no dict per id
                        await ids.execute(plan.after, {**plan.params, **first})
                        rows = await ids.fetchall()
                    if len(rows) != plan.expected:
                        raise ConnectorError(
                            COPY_MISMATCH.format(expected=plan.expected, got=len(rows))
                        )
                return [row[0] for row in rows]
            finally:
                await self._spare.check_in(lease, since, is_idle(conn))

    async def listen(
        self,
        channels: list[str],
        on_notify: NotifyCallback,
        on_ready: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None:
        """LISTEN on a dedicated connection and call `on_notify(channel, payload)` until
        cancelled; `on_ready` runs once the LISTENs are in place."""
        conninfo, kwargs = await _pool_params(self.pool)
        kwargs["autocommit"] = True
        with wrap_exceptions(self._secrets):
            conn = await psycopg.AsyncConnection.connect(conninfo, **kwargs)
        async with conn:
            with wrap_exceptions(self._secrets):
                for channel in channels:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                if on_ready is not None:
                    result = on_ready()
                    if result is not None:
                        await result
                async for notify in conn.notifies():
                    on_notify(notify.channel, notify.payload)

    def get_sync_connector(self) -> Any:
        """A blocking twin on the same database, for `defer()` from synchronous code.

        It has its own small pool (opened on first use, from any thread), of the same
        kind as ours: a null pool when ours is one, so PgBouncer setups stay poolless."""
        with self._sync_lock:
            if self._sync is None:
                self._sync = self._make_sync_connector()
        return self._sync

    def _make_sync_connector(self) -> Any:
        from .sync_psycopg import SyncPsycopgConnector

        source = self._pool
        conninfo, kwargs = self.conninfo, self.kwargs
        if source is not None and isinstance(source.conninfo, str):
            conninfo = source.conninfo
        if source is not None and isinstance(source.kwargs, dict):
            kwargs = dict(source.kwargs)
        null = isinstance(source, psycopg_pool.AsyncNullConnectionPool) or (
            self.pool_factory is psycopg_pool.AsyncNullConnectionPool
        )
        max_size = source.max_size if source is not None else None
        return SyncPsycopgConnector(
            conninfo=conninfo,
            kwargs=kwargs,
            json_dumps=self.json_dumps,
            json_loads=self.json_loads,
            open_lazily=True,
            pool_factory=psycopg_pool.NullConnectionPool if null else None,
            max_size=max_size or self.pool_kwargs.get("max_size", 10),
            **({} if null else {"min_size": 1}),
        )

    def get_worker_connector(self) -> PsycopgConnector:
        return self


async def _put_back(lease: AsyncPoolLease) -> None:
    """Return a connection to the pool it came from."""
    pool, conn, cur = lease
    await cur.close()
    await pool.putconn(conn)


async def _discard(lease: tuple[Any, psycopg.AsyncConnection[Any], Any]) -> None:
    """Close a connection that must not be used again and hand it to its pool, which
    replaces it."""
    pool, conn, _ = lease
    await conn.close()
    await pool.putconn(conn)
