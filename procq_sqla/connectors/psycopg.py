"""`PsycopgConnector`: asyncio psycopg 3 over a `psycopg_pool.AsyncConnectionPool`.

It defers, reads jobs and LISTENs, so it runs the worker. Connections are autocommit
(one round trip per statement, no BEGIN/COMMIT) and are not checked on checkout (that
would cost a round trip per operation); instead a statement that fails because the
server had already closed the connection is run once more on a fresh one.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from ..database import mask_password
from ..exceptions import AppNotOpen, ConnectorError
from .base import (
    RETRYABLE_SQLSTATES,
    JSONDumps,
    JSONLoads,
    NotifyCallback,
    Params,
    Row,
    default_json_dumps,
    translate_error,
)

PoolFactory = Callable[..., psycopg_pool.AsyncConnectionPool[Any]]


@contextmanager
def wrap_exceptions() -> Iterator[None]:
    """The one place psycopg's and psycopg_pool's errors become procq_sqla's."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate_error(
            exc, sqlstate=exc.sqlstate, constraint=exc.diag.constraint_name
        ) from exc
    except psycopg_pool.PoolTimeout as exc:
        raise ConnectorError(
            f"no database connection became available in time ({mask_password(str(exc))})"
        ) from exc
    except psycopg_pool.PoolClosed as exc:
        raise AppNotOpen() from exc


def is_stale_connection_error(exc: psycopg.Error) -> bool:
    """True when the statement never ran because the server had dropped the connection."""
    return exc.sqlstate in RETRYABLE_SQLSTATES


def connection_kwargs(
    kwargs: dict[str, Any] | None, json_loads: JSONLoads | None
) -> tuple[dict[str, Any], Callable[..., Any] | None]:
    """Connection keywords (autocommit, dict rows) and a configure hook for json_loads."""
    merged = {"autocommit": True, "row_factory": dict_row, **(kwargs or {})}
    if json_loads is None:
        return merged, None
    loads = json_loads

    def configure(conn: Any) -> None:
        set_json_loads(loads, conn)

    return merged, configure


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


class PsycopgConnector:
    """asyncio connector on psycopg 3; `conninfo=`, `kwargs=`, or libpq variables."""

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
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._owns_pool = False
        self._sync: Any = None

    def __repr__(self) -> str:
        return f"PsycopgConnector(conninfo={mask_password(self.conninfo)!r})"

    async def open_async(self, pool: psycopg_pool.AsyncConnectionPool[Any] | None = None) -> None:
        """Open our own pool, or adopt `pool` (which we will then never close)."""
        if self._pool is not None:
            return
        if pool is not None:
            self._pool, self._owns_pool = pool, False
            return
        kwargs, configure = connection_kwargs(self.kwargs, self.json_loads)
        options: dict[str, Any] = {"min_size": 1, "max_size": 10, **self.pool_kwargs}
        if configure is not None:
            options.setdefault("configure", configure)
        with wrap_exceptions():
            try:
                created = self.pool_factory(self.conninfo, kwargs=kwargs, open=False, **options)
            except TypeError as exc:
                raise ConnectorError(f"invalid pool option: {exc}") from exc
            await created.open(wait=True, timeout=options.get("timeout", 30.0))
        self._pool, self._owns_pool = created, True

    async def close_async(self) -> None:
        if self._sync is not None:
            await asyncio.to_thread(self._sync.close)
            self._sync = None
        pool, self._pool = self._pool, None
        if pool is not None and self._owns_pool:
            await pool.close()

    @property
    def pool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        if self._pool is None:
            raise AppNotOpen()
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self.pool.connection() as conn:
            yield conn

    async def _run(self, query: str, params: Params, fetch: str) -> Any:
        for attempt in (1, 2):
            with wrap_exceptions():
                try:
                    async with self._connection() as conn:
                        cursor = await conn.execute(query, params)
                        if fetch == "one":
                            return await cursor.fetchone()
                        if fetch == "all":
                            return await cursor.fetchall()
                        return None
                except psycopg.OperationalError as exc:
                    if attempt == 1 and is_stale_connection_error(exc):
                        continue
                    raise
        raise AssertionError("unreachable")

    async def execute_async(self, query: str, params: Params) -> None:
        await self._run(query, params, "none")

    async def fetch_one_async(self, query: str, params: Params) -> Row | None:
        row: Row | None = await self._run(query, params, "one")
        return row

    async def fetch_all_async(self, query: str, params: Params) -> list[Row]:
        rows: list[Row] = await self._run(query, params, "all")
        return rows

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
        with wrap_exceptions():
            conn = await psycopg.AsyncConnection.connect(conninfo, **kwargs)
        async with conn:
            with wrap_exceptions():
                for channel in channels:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                if on_ready is not None:
                    result = on_ready()
                    if result is not None:
                        await result
                async for notify in conn.notifies():
                    on_notify(notify.channel, notify.payload)

    def get_sync_connector(self) -> Any:
        """A blocking twin on the same database, for `defer()` from synchronous code."""
        if self._sync is None:
            from .sync_psycopg import SyncPsycopgConnector

            source = self._pool
            conninfo, kwargs = self.conninfo, self.kwargs
            if source is not None and isinstance(source.conninfo, str):
                conninfo = source.conninfo
            if source is not None and isinstance(source.kwargs, dict):
                kwargs = dict(source.kwargs)
            self._sync = SyncPsycopgConnector(
                conninfo=conninfo,
                kwargs=kwargs,
                json_dumps=self.json_dumps,
                json_loads=self.json_loads,
                min_size=1,
                max_size=self.pool_kwargs.get("max_size", 10),
                open_lazily=True,
            )
        return self._sync

    def get_worker_connector(self) -> PsycopgConnector:
        return self
