"""`SyncPsycopgConnector`: blocking psycopg 3 over a `psycopg_pool.ConnectionPool`.

For web processes and scripts that only defer and read jobs. It is also the blocking twin
that `PsycopgConnector` lends to synchronous code (`task.defer()` on an async app, from
any thread), so no event loop is ever spun up per call. It cannot run the worker.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import psycopg_pool

from ..database import mask_password
from ..exceptions import AppNotOpen, ConnectorError, WrongConnector
from .base import JSONDumps, JSONLoads, Params, Row, default_json_dumps
from .psycopg import connection_kwargs, is_stale_connection_error, wrap_exceptions


class SyncPsycopgConnector:
    """Blocking connector on psycopg 3; defers only (the worker needs PsycopgConnector)."""

    def __init__(
        self,
        *,
        conninfo: str = "",
        kwargs: dict[str, Any] | None = None,
        json_dumps: JSONDumps | None = None,
        json_loads: JSONLoads | None = None,
        open_lazily: bool = False,
        **pool_kwargs: Any,
    ) -> None:
        self.conninfo = conninfo
        self.kwargs = dict(kwargs or {})
        self.pool_kwargs = pool_kwargs
        self.json_dumps: JSONDumps = json_dumps or default_json_dumps
        self.json_loads = json_loads
        self._open_lazily = open_lazily
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._owns_pool = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SyncPsycopgConnector(conninfo={mask_password(self.conninfo)!r})"

    def open(self, pool: psycopg_pool.ConnectionPool[Any] | None = None) -> None:
        with self._lock:
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
                    created = psycopg_pool.ConnectionPool(
                        self.conninfo, kwargs=kwargs, open=False, **options
                    )
                except TypeError as exc:
                    raise ConnectorError(f"invalid pool option: {exc}") from exc
                created.open(wait=True, timeout=options.get("timeout", 30.0))
            self._pool, self._owns_pool = created, True

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
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

    def _run(self, query: str, params: Params, fetch: str) -> Any:
        for attempt in (1, 2):
            with wrap_exceptions():
                try:
                    with self.pool.connection() as conn:
                        cursor = conn.execute(query, params)
                        if fetch == "one":
                            return cursor.fetchone()
                        if fetch == "all":
                            return cursor.fetchall()
                        return None
                except psycopg.OperationalError as exc:
                    if attempt == 1 and is_stale_connection_error(exc):
                        continue
                    raise
        raise AssertionError("unreachable")

    def execute(self, query: str, params: Params) -> None:
        self._run(query, params, "none")

    def fetch_one(self, query: str, params: Params) -> Row | None:
        row: Row | None = self._run(query, params, "one")
        return row

    def fetch_all(self, query: str, params: Params) -> list[Row]:
        rows: list[Row] = self._run(query, params, "all")
        return rows

    def get_worker_connector(self) -> Any:
        raise WrongConnector(
            "SyncPsycopgConnector cannot run the worker or defer_async: use "
            "PsycopgConnector (same conninfo/kwargs) for the worker process, e.g. "
            "app.with_connector(PsycopgConnector(conninfo=...))"
        )
