"""`Psycopg2Connector`: blocking psycopg2 over a `psycopg2.pool.ThreadedConnectionPool`.

For web processes still on psycopg2 that only defer and read jobs; the worker runs on
`PsycopgConnector` or `AiopgConnector` (`app.with_connector(...)`). It is also the
blocking twin `AiopgConnector` lends to synchronous code. psycopg2's pool never waits
(it raises "pool exhausted"), so callers queue on a semaphore of `maxconn` slots for up
to `timeout` seconds instead. A pooled connection whose socket already holds the
server's goodbye is discarded before a statement is sent on it (no round trip).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extras
import psycopg2.pool

from ..exceptions import AppNotOpen, ConnectorError, WrongConnector
from .base import (
    ALL_DEAD,
    ErrorWrapper,
    JSONDumps,
    JSONLoads,
    Params,
    SyncQueryMethods,
    connect_error,
    default_json_dumps,
    describe_params,
    dsn_secrets,
    fetch_result,
    has_unread_input,
    is_idle,
    translate_error,
)
from .prepared import PREPARED_QUERIES, prepared_names
from .spare import Spare
from .sync_psycopg import WRONG_WORKER

MAX_DISCARDS = 32

# A pooled connection with the pool and the semaphore slot it holds, and the cursor our
# statements run on while it is out of the pool.
PoolLease = tuple[psycopg2.pool.ThreadedConnectionPool, threading.BoundedSemaphore, Any, Any]


class wrap_exceptions(ErrorWrapper):
    """The one place psycopg2's errors become procq_sqla's."""

    __slots__ = ()

    def translate(self, exc: BaseException) -> BaseException | None:
        if not isinstance(exc, psycopg2.Error):
            return None
        diag = getattr(exc, "diag", None)
        return translate_error(
            exc,
            sqlstate=exc.pgcode,
            constraint=getattr(diag, "constraint_name", None),
            secrets=self.secrets,
        )


def is_dead(conn: Any) -> bool:
    """True for an idle connection the server has already closed (no round trip)."""
    if conn.closed:
        return True
    try:
        return has_unread_input(conn.fileno())
    except psycopg2.Error:
        return True


def prepare_cursor(cursor: Any, json_loads: JSONLoads | None) -> None:
    """Per-cursor JSON parsing, so it also applies on a pool we did not create."""
    if json_loads is not None:
        psycopg2.extras.register_default_json(cursor, loads=json_loads)
        psycopg2.extras.register_default_jsonb(cursor, loads=json_loads)


def execute(conn: Any, cursor: Any, query: str, params: Params) -> None:
    """Run `query` on a psycopg2 cursor; on an autocommit connection, a hot query runs as
    a server-side prepared statement (PREPAREd the first time on that connection)."""
    prepared = PREPARED_QUERIES.get(query)
    if prepared is None or not conn.autocommit:
        cursor.execute(query, dict(params))
        return
    names = prepared_names(conn)
    if prepared.name not in names:
        # already there in a session shared through a pooler: the same text (digest)
        with contextlib.suppress(psycopg2.errors.DuplicatePreparedStatement):
            cursor.execute(prepared.prepare)
        names.add(prepared.name)
    try:
        cursor.execute(prepared.execute, prepared.args(params))
    except psycopg2.errors.InvalidSqlStatementName:
        # dropped behind our back (DISCARD ALL, a transaction-mode pooler): never ran
        names.discard(prepared.name)
        cursor.execute(query, dict(params))


def run_statement(cur: Any, query: str, params: Params, fetch: str) -> Any:
    """One statement on the cursor of a blocking psycopg2 connection, kept as long as the
    connection stays out of the pool. A connection that is not in autocommit (from a pool
    handed to `open(pool)`) gets its own commit or rollback."""
    conn = cur.connection
    try:
        execute(conn, cur, query, params)
        result = fetch_result(cur, fetch)
        if not conn.autocommit:
            conn.commit()
        return result
    except BaseException:
        if not conn.closed and not conn.autocommit:
            conn.rollback()
        raise


class Psycopg2Connector(SyncQueryMethods):
    """Blocking connector on psycopg2; defers and reads jobs, cannot run the worker.

    Connection parameters: `dsn=`, psycopg2/libpq keywords (`host=`, `dbname=`, ...), or
    the libpq variables when neither is given. `minconn`/`maxconn` size the pool
    (psycopg2's pool keeps at most `minconn` idle connections); `timeout` is how long a
    call waits for a free connection.
    """

    def __init__(
        self,
        *,
        minconn: int = 1,
        maxconn: int = 10,
        timeout: float = 30.0,
        json_dumps: JSONDumps | None = None,
        json_loads: JSONLoads | None = None,
        open_lazily: bool = False,
        **kwargs: Any,
    ) -> None:
        self.minconn = minconn
        self.maxconn = maxconn
        self.timeout = timeout
        self.kwargs = kwargs
        self.json_dumps: JSONDumps = json_dumps or default_json_dumps
        self.json_loads = json_loads
        self._secrets = dsn_secrets(kwargs.get("dsn"), kwargs)
        self._open_lazily = open_lazily
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._owns_pool = False
        self._slots = threading.BoundedSemaphore(maxconn)
        self._lock = threading.Lock()
        self._spare: Spare[PoolLease] = Spare(_put_back, _discard, "Psycopg2Connector")

    def __repr__(self) -> str:
        others = {k: v for k, v in self.kwargs.items() if k != "dsn"}
        return f"Psycopg2Connector({describe_params('dsn', self.kwargs.get('dsn'), others)})"

    def open(self, pool: psycopg2.pool.ThreadedConnectionPool | None = None) -> None:
        """Open our own pool, or adopt `pool` (which we will then never close)."""
        with self._lock:
            if self._pool is not None:
                return
            if pool is not None:
                self._slots = threading.BoundedSemaphore(pool.maxconn)
                self._pool, self._owns_pool = pool, False
                return
            self._pool, self._owns_pool = self._create_pool(), True

    def _create_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        try:
            created = psycopg2.pool.ThreadedConnectionPool(
                self.minconn, self.maxconn, **self.kwargs
            )
            # minconn=0 connects nobody yet: one connection now, so bad parameters fail here
            created.putconn(created.getconn())
        except psycopg2.pool.PoolError as exc:
            raise ConnectorError(
                f"invalid pool option for Psycopg2Connector ({exc}): check its keyword arguments"
            ) from exc
        except (psycopg2.Error, TypeError) as exc:
            raise connect_error(exc, "Psycopg2Connector", self._secrets) from exc
        self._slots = threading.BoundedSemaphore(self.maxconn)
        return created

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        self._spare.release()
        if pool is not None and self._owns_pool:
            pool.closeall()

    @property
    def pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        if self._pool is None:
            if not self._open_lazily:
                raise AppNotOpen()
            self.open()
        assert self._pool is not None
        return self._pool

    def _checkout(self) -> tuple[PoolLease, float]:
        """A live connection with its pool and semaphore slot, and when it left the
        pool: the spare one of the last statement if there is one, else one from the
        pool (dead ones are discarded). The caller hands it to `_spare.check_in`."""
        spare = self._spare.take(lambda lease: lease[0] is self._pool and not is_dead(lease[2]))
        if spare is not None:
            return spare
        pool, slots = self.pool, self._slots  # the slot we take is the one we release
        if not slots.acquire(timeout=self.timeout):
            raise ConnectorError(
                f"no database connection became available in {self.timeout:g} s: "
                "raise Psycopg2Connector's maxconn or timeout"
            )
        try:
            for _ in range(MAX_DISCARDS):
                conn = pool.getconn()
                if not is_dead(conn):
                    if self._owns_pool and not conn.autocommit:
                        conn.autocommit = True  # one round trip per statement, no BEGIN
                    cur = conn.cursor()
                    prepare_cursor(cur, self.json_loads)
                    return (pool, slots, conn, cur), time.monotonic()
                pool.putconn(conn, close=True)
        except BaseException:
            slots.release()
            raise
        slots.release()
        raise ConnectorError(ALL_DEAD)

    def _run(self, query: str, params: Params, fetch: str) -> Any:
        with wrap_exceptions(self._secrets):
            lease, since = self._checkout()
            try:
                return run_statement(lease[3], query, params, fetch)
            finally:
                self._spare.check_in(lease, since, is_idle(lease[2]))

    def get_worker_connector(self) -> Any:
        raise WrongConnector(WRONG_WORKER.format(name="Psycopg2Connector"))


def _put_back(lease: PoolLease, *, close: bool = False) -> None:
    """Return a connection to its pool (closed when dead) and free its slot."""
    pool, slots, conn, cur = lease
    try:
        with contextlib.suppress(psycopg2.Error):
            cur.close()
        pool.putconn(conn, close=close or bool(conn.closed))
    finally:
        slots.release()


def _discard(lease: PoolLease) -> None:
    """`_put_back`, closing the connection: it must not be used again."""
    _put_back(lease, close=True)
