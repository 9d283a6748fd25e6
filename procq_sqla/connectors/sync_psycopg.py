"""`SyncPsycopgConnector`: blocking psycopg 3 over a `psycopg_pool.ConnectionPool`.

For web processes and scripts that only defer and read jobs. It is also the blocking twin
that `PsycopgConnector` lends to synchronous code (`task.defer()` on an async app, from
any thread), so no event loop is ever spun up per call. It cannot run the worker.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg_pool
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row, tuple_row

from ..exceptions import AppNotOpen, ConnectorError, WrongConnector
from .base import (
    ALL_DEAD,
    COPY_MISMATCH,
    CopyPlan,
    JSONDumps,
    JSONLoads,
    Params,
    SyncQueryMethods,
    connect_error,
    default_json_dumps,
    dsn_secrets,
    is_idle,
)
from .prepared import protocol_args, run_prepared, shaped
from .psycopg import (
    MAX_DISCARDS,
    connection_kwargs,
    describe,
    first_value,
    is_dead,
    is_stale_connection_error,
    pool_options,
    prepare_cursor,
    wrap_exceptions,
)
from .spare import Spare

# A pooled connection, its pool, and the dict-row cursor our statements run on.
PoolLease = tuple[
    "psycopg_pool.ConnectionPool[Any]", "psycopg.Connection[Any]", "psycopg.Cursor[Any]"
]

SyncPoolFactory = Callable[..., psycopg_pool.ConnectionPool[Any]]

WRONG_WORKER = (
    "{name} is synchronous and cannot run the worker or defer_async: give that process "
    "PsycopgConnector or AiopgConnector instead, as in app.with_connector("
    "PsycopgConnector(conninfo=...)), because {name}.get_worker_connector() has no async pair"
)


def run_statement(cur: psycopg.Cursor[Any], query: str, params: Params, fetch: str) -> Any:
    """One statement on a pooled connection's cursor, committed (or rolled back) at once
    when the connection is not in autocommit (a pool handed to `open(pool)`). The cursor
    lives as long as the connection stays out of the pool: making and closing one per
    statement cost about 20 µs of CPU, more than the rest of a defer's client side. A
    hot statement skips the cursor (`prepared.run_prepared`)."""
    conn = cur.connection
    if fetch != "none" and (hot := protocol_args(conn, query, params)) is not None:
        return shaped(run_prepared(conn, *hot), hot[0], fetch, cur)
    try:
        cur.execute(query, params)
        if fetch == "one":
            result: Any = cur.fetchone()
        elif fetch == "all":
            result = cur.fetchall()
        elif fetch == "value":
            result = first_value(cur.fetchone())
        else:
            result = None
        if conn.pgconn.transaction_status != TransactionStatus.IDLE:
            conn.commit()
        return result
    except BaseException:
        if not conn.closed and conn.pgconn.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
        raise


class SyncPsycopgConnector(SyncQueryMethods):
    """Blocking connector on psycopg 3; defers only (the worker needs PsycopgConnector).

    Parameters as for `PsycopgConnector`: `conninfo=`, `kwargs=` or libpq variables;
    every other keyword goes to the pool (`min_size=`, `max_size=`, `timeout=`, ...).
    """

    def __init__(
        self,
        *,
        conninfo: str = "",
        kwargs: dict[str, Any] | None = None,
        pool_factory: SyncPoolFactory | None = None,
        json_dumps: JSONDumps | None = None,
        json_loads: JSONLoads | None = None,
        open_lazily: bool = False,
        **pool_kwargs: Any,
    ) -> None:
        self.conninfo = conninfo
        self.kwargs = dict(kwargs or {})
        self.pool_factory: SyncPoolFactory = pool_factory or psycopg_pool.ConnectionPool
        self.pool_kwargs = pool_kwargs
        self.json_dumps: JSONDumps = json_dumps or default_json_dumps
        self.json_loads = json_loads
        self._secrets = dsn_secrets(conninfo, self.kwargs)
        self._open_lazily = open_lazily
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._owns_pool = False
        self._lock = threading.Lock()
        self._spare: Spare[PoolLease] = Spare(_put_back, _discard, "SyncPsycopgConnector")

    def __repr__(self) -> str:
        return describe("SyncPsycopgConnector", self.conninfo, self.kwargs)

    def open(self, pool: psycopg_pool.ConnectionPool[Any] | None = None) -> None:
        """Open our own pool, or adopt `pool` (which we will then never close)."""
        with self._lock:
            if self._pool is not None:
                return
            if pool is not None:
                self._pool, self._owns_pool = pool, False
                return
            self._pool, self._owns_pool = self._create_pool(), True

    def _create_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        kwargs = connection_kwargs(self.kwargs)
        options = pool_options(self.pool_factory, psycopg_pool.ConnectionPool, self.pool_kwargs)
        try:  # no I/O yet: an unknown pool option fails first
            created = self.pool_factory(self.conninfo, kwargs=kwargs, open=False, **options)
        except (TypeError, ValueError) as exc:
            raise ConnectorError(
                f"invalid pool option for SyncPsycopgConnector ({exc}): check its keyword arguments"
            ) from exc
        try:  # one direct connection: bad parameters fail now, in libpq's own words
            psycopg.connect(self.conninfo, **kwargs).close()
        except psycopg.Error as exc:
            raise connect_error(exc, "SyncPsycopgConnector", self._secrets) from exc
        with wrap_exceptions(self._secrets):
            created.open(wait=True, timeout=options.get("timeout", 30.0))
        return created

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        self._spare.release()
        if pool is not None and self._owns_pool:
            pool.close()

    @property
    def pool(self) -> psycopg_pool.ConnectionPool[Any]:
        if self._pool is None:
            if not self._open_lazily:
                raise AppNotOpen()
            self.open()
        assert self._pool is not None
        return self._pool

    def _checkout(self) -> tuple[PoolLease, float]:
        """A live connection with its pool, and when it left the pool: the spare one of
        the last statement if there is one, else one from the pool (dead ones are
        closed: the pool replaces them). The caller hands it to `_spare.check_in`.
        getconn/putconn rather than pool.connection(): no context manager and no
        commit() on our autocommit connections (every defer)."""
        spare = self._spare.take(lambda lease: lease[0] is self._pool and not is_dead(lease[1]))
        if spare is not None:
            return spare
        pool = self.pool
        for _ in range(MAX_DISCARDS):
            conn = pool.getconn()
            if not is_dead(conn):
                cur = conn.cursor(row_factory=dict_row)
                prepare_cursor(cur, self.json_loads)
                return (pool, conn, cur), time.monotonic()
            _discard((pool, conn, None))
        raise ConnectorError(ALL_DEAD)

    def _run(self, query: str, params: Params, fetch: str) -> Any:
        retried = False
        while True:
            with wrap_exceptions(self._secrets):
                lease, since = self._checkout()
                try:
                    return run_statement(lease[2], query, params, fetch)
                except psycopg.OperationalError as exc:
                    if not retried and is_stale_connection_error(exc):
                        retried = True
                        continue
                    raise
                finally:
                    self._spare.check_in(lease, since, is_idle(lease[1]))

    def copy_in(self, plan: CopyPlan) -> list[Any]:
        """Run a `CopyPlan` (big batch defers) on one pooled connection."""
        with wrap_exceptions(self._secrets):
            lease, since = self._checkout()
            conn = lease[1]
            try:
                with conn.transaction():  # a mismatch below rolls the COPY back
                    with conn.cursor(row_factory=dict_row) as cur:
                        first = cur.execute(plan.before, plan.params).fetchone() or {}
                        with cur.copy(plan.copy) as copy:
                            for chunk in plan.data:
                                copy.write(chunk)
                    with conn.cursor(row_factory=tuple_row) as ids:  # no dict per id
                        rows = ids.execute(plan.after, {**plan.params, **first}).fetchall()
                    if len(rows) != plan.expected:
                        raise ConnectorError(
                            COPY_MISMATCH.format(expected=plan.expected, got=len(rows))
                        )
                return [row[0] for row in rows]
            finally:
                self._spare.check_in(lease, since, is_idle(conn))

    def get_worker_connector(self) -> Any:
        raise WrongConnector(WRONG_WORKER.format(name="SyncPsycopgConnector"))


def _put_back(lease: PoolLease) -> None:
    """Return a connection to the pool it came from."""
    pool, conn, cur = lease
    cur.close()
    pool.putconn(conn)


def _discard(lease: tuple[Any, psycopg.Connection[Any], Any]) -> None:
    """Close a connection that must not be used again and hand it to its pool, which
    replaces it."""
    pool, conn, _ = lease
    conn.close()
    pool.putconn(conn)
