"""`AiopgConnector`: asyncio psycopg2 over an aiopg pool (the optional `aiopg` extra).

It defers, reads jobs and LISTENs, so it runs the worker, like `PsycopgConnector`. aiopg
connections are always autocommit. Synchronous code on an app using it (`task.defer()`
from a view or from a `def` task in the worker) goes through a blocking twin, a
`Psycopg2Connector` on the same parameters, so no event loop is ever spun up per call.
A pooled connection whose socket already holds the server's goodbye is discarded before
a statement is sent on it (no round trip).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiopg
import psycopg2
import psycopg2.sql

from ..exceptions import AppNotOpen, ConnectorError
from .base import (
    ALL_DEAD,
    AsyncQueryMethods,
    JSONDumps,
    JSONLoads,
    NotifyCallback,
    Params,
    as_dicts,
    connect_error,
    default_json_dumps,
    describe_params,
    dsn_secrets,
    is_idle,
)
from .psycopg2 import MAX_DISCARDS, Psycopg2Connector, is_dead, prepare_cursor, wrap_exceptions
from .spare import AsyncSpare

# aiopg.create_pool's own options; every other keyword is a connection parameter.
POOL_OPTIONS = frozenset(
    {
        "minsize",
        "maxsize",
        "timeout",
        "pool_recycle",
        "enable_json",
        "enable_hstore",
        "enable_uuid",
        "echo",
        "on_connect",
    }
)


class AiopgConnector(AsyncQueryMethods):
    """asyncio connector on aiopg; `dsn=`, psycopg2/libpq keywords, or libpq variables.

    aiopg's pool options (`minsize=`, `maxsize=`, `timeout=`, `pool_recycle=`, ...) go
    to `aiopg.create_pool`, like every other keyword. hstore support is off by default
    (it costs a query per new connection); pass `enable_hstore=True` to turn it on.
    """

    def __init__(
        self,
        *,
        json_dumps: JSONDumps | None = None,
        json_loads: JSONLoads | None = None,
        **kwargs: Any,
    ) -> None:
        self.kwargs = kwargs
        self.json_dumps: JSONDumps = json_dumps or default_json_dumps
        self.json_loads = json_loads
        self._secrets = dsn_secrets(kwargs.get("dsn"), kwargs)
        self._pool: aiopg.Pool | None = None
        self._owns_pool = False
        self._sync: Psycopg2Connector | None = None
        self._sync_lock = threading.Lock()  # def tasks ask for the twin from many threads
        self._spare: AsyncSpare[AiopgLease] = AsyncSpare(_put_back, _discard)

    def __repr__(self) -> str:
        others = {k: v for k, v in self.kwargs.items() if k != "dsn"}
        return f"AiopgConnector({describe_params('dsn', self.kwargs.get('dsn'), others)})"

    def _connection_params(self) -> tuple[str | None, dict[str, Any]]:
        """The DSN and connection keywords, from the adopted pool when there is one."""
        if self._pool is not None and not self._owns_pool:
            return getattr(self._pool, "_dsn", None), dict(getattr(self._pool, "_conn_kwargs", {}))
        params = {k: v for k, v in self.kwargs.items() if k not in POOL_OPTIONS and k != "dsn"}
        return self.kwargs.get("dsn"), params

    async def open_async(self, pool: aiopg.Pool | None = None) -> None:
        """Open our own pool, or adopt `pool` (which we will then never close)."""
        if self._pool is not None:
            return
        if pool is not None:
            self._pool, self._owns_pool = pool, False
            return
        options: dict[str, Any] = {"enable_hstore": False, **self.kwargs}
        try:
            created = await aiopg.create_pool(**options)
        except (TypeError, ValueError) as exc:
            raise ConnectorError(
                f"invalid pool option for AiopgConnector ({exc}): check its keyword arguments"
            ) from exc
        except (psycopg2.Error, OSError, TimeoutError) as exc:
            raise connect_error(exc, "AiopgConnector", self._secrets) from exc
        if created.minsize == 0:  # nobody connected yet: one connection now, so it fails here
            try:
                async with created.acquire():
                    pass
            except (psycopg2.Error, OSError, TimeoutError) as exc:
                created.close()
                await created.wait_closed()
                raise connect_error(exc, "AiopgConnector", self._secrets) from exc
        self._pool, self._owns_pool = created, True

    async def close_async(self) -> None:
        if self._sync is not None:
            await asyncio.to_thread(self._sync.close)
            self._sync = None
        pool, self._pool = self._pool, None
        await self._spare.release()
        if pool is not None and self._owns_pool:
            pool.close()
            await pool.wait_closed()

    @property
    def pool(self) -> aiopg.Pool:
        if self._pool is None:
            raise AppNotOpen()
        return self._pool

    async def _run(self, query: str, params: Params, fetch: str) -> Any:
        pool = self.pool
        # aiopg's `timeout` bounds every operation, but not the wait for a pooled
        # connection (that waits forever): bound it here with the same value
        timeout = float(getattr(pool, "timeout", 60.0))
        with wrap_exceptions(self._secrets):
            lease, since = await self._checkout(pool, timeout)
            try:
                return await self._statement(lease[1], query, params, fetch)
            except TimeoutError as exc:
                raise ConnectorError(
                    f"the statement took longer than AiopgConnector's timeout ({timeout:g} s)"
                ) from exc
            finally:
                await self._spare.check_in(lease, since, is_idle(lease[1].raw))

    async def _checkout(self, pool: aiopg.Pool, timeout: float) -> tuple[AiopgLease, float]:
        """A live connection with its pool, and when it left the pool: the spare one of
        the last statement if there is one, else one from the pool (dead ones are
        closed: the pool forgets them)."""
        spare = await self._spare.take(lambda lease: lease[0] is pool and not is_dead(lease[1].raw))
        if spare is not None:
            return spare
        for _ in range(MAX_DISCARDS):
            try:
                conn = await asyncio.wait_for(pool.acquire(), timeout)
            except TimeoutError as exc:
                raise ConnectorError(
                    f"no database connection became available in {timeout:g} s: "
                    "raise AiopgConnector's maxsize or timeout"
                ) from exc
            if not is_dead(conn.raw):
                return (pool, conn), time.monotonic()
            await _discard((pool, conn))
        raise ConnectorError(ALL_DEAD)

    async def _statement(self, conn: Any, query: str, params: Params, fetch: str) -> Any:
        async with conn.cursor() as cur:
            prepare_cursor(cur.raw, self.json_loads)
            await cur.execute(query, dict(params))
            if fetch == "one":
                row = await cur.fetchone()
                return None if row is None else as_dicts(cur.description, [row])[0]
            if fetch == "all":
                return as_dicts(cur.description, await cur.fetchall())
            if fetch == "value":
                row = await cur.fetchone()
                return None if row is None else row[0]
            return None

    @asynccontextmanager
    async def _dedicated_connection(self) -> AsyncIterator[Any]:
        """A connection outside the pool, so LISTEN never holds one of its slots."""
        dsn, params = self._connection_params()
        timeout = getattr(self.pool, "timeout", 60.0)
        with wrap_exceptions(self._secrets):
            conn = await aiopg.connect(dsn, timeout=timeout, enable_hstore=False, **params)
        try:
            yield conn
        finally:
            await conn.close()

    async def listen(
        self,
        channels: list[str],
        on_notify: NotifyCallback,
        on_ready: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None:
        """LISTEN on a dedicated connection and call `on_notify(channel, payload)` until
        cancelled; `on_ready` runs once the LISTENs are in place. A lost connection ends
        this with a ConnectorError (the worker then listens again)."""
        async with self._dedicated_connection() as conn:
            with wrap_exceptions(self._secrets):
                async with conn.cursor() as cur:
                    for channel in channels:
                        listen = psycopg2.sql.SQL("LISTEN {}")
                        await cur.execute(listen.format(psycopg2.sql.Identifier(channel)))
                if on_ready is not None:
                    result = on_ready()
                    if result is not None:
                        await result
                while True:
                    notify = await conn.notifies.get()
                    on_notify(notify.channel, notify.payload)

    def get_sync_connector(self) -> Psycopg2Connector:
        """A blocking twin on the same database, for `defer()` from synchronous code:
        a `Psycopg2Connector` with its own pool, opened on first use from any thread."""
        with self._sync_lock:
            if self._sync is None:
                self._sync = self._make_sync_connector()
        return self._sync

    def _make_sync_connector(self) -> Psycopg2Connector:
        dsn, params = self._connection_params()
        if dsn is not None:
            params["dsn"] = dsn
        maxsize = self._pool.maxsize if self._pool is not None else None
        return Psycopg2Connector(
            minconn=1,
            maxconn=maxsize or self.kwargs.get("maxsize") or 10,
            json_dumps=self.json_dumps,
            json_loads=self.json_loads,
            open_lazily=True,
            **params,
        )

    def get_worker_connector(self) -> AiopgConnector:
        return self


# A pooled aiopg connection and its pool.
AiopgLease = tuple[aiopg.Pool, Any]


async def _put_back(lease: AiopgLease) -> None:
    """Return a connection to its pool."""
    pool, conn = lease
    await pool.release(conn)


async def _discard(lease: AiopgLease) -> None:
    """Close a connection that must not be used again (the pool forgets closed ones)."""
    pool, conn = lease
    await conn.close()
    await pool.release(conn)
