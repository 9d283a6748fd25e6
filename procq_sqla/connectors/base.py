"""The two small protocols every connector implements, and the shared error mapping.

A sync connector can defer and read jobs; an async connector can also LISTEN and so run
the worker. Connectors implement only what they truly support: the type checker and a
clear `WrongConnector` error catch a sync connector given to the worker. Each driver
catches its own errors in one place and hands the facts to `translate_error`.
"""

from __future__ import annotations

import json
import re
import select
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from ..database import mask_password
from ..exceptions import AlreadyEnqueued, ConnectorError, SchemaMissing

Params = Mapping[str, Any]
Row = dict[str, Any]
JSONDumps = Callable[[Any], str]
JSONLoads = Callable[[str | bytes], Any]
NotifyCallback = Callable[[str, str], None]

QUEUEING_LOCK_INDEX = "procq_jobs_queueing_lock_idx"
LOCK_INDEX = "procq_jobs_lock_doing_idx"
# SQLSTATEs after which the server never ran the statement: safe to run it again once.
RETRYABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


# One encoder for every call: json.dumps with non-default options builds a new one each time.
_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def _c_encode() -> Callable[[Any, int], Any]:
    """A C encoder with `_ENCODER`'s options: what `JSONEncoder.encode` builds anew on
    every call through two Python frames. Its circular-reference markers live as long as
    it does, so one is never kept past a call (or a batch)."""
    return c_make_encoder(  # type: ignore[no-any-return]
        {}, _ENCODER.default, encode_basestring, None, ":", ",", False, False, False
    )


def default_json_dumps(value: Any) -> str:
    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return _ENCODER.encode(value)
    return "".join(_c_encode()(value, 0))


def default_json_dumps_many(values: list[Any]) -> list[str]:
    """`default_json_dumps` of each value, with one C encoder for the whole list. The
    same texts and the same errors (circular reference, NaN, unknown type)."""
    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return [_ENCODER.encode(value) for value in values]
    encode = _c_encode()
    return ["".join(encode(value, 0)) for value in values]


@runtime_checkable
class SyncConnector(Protocol):
    """Blocking I/O: defers and reads jobs; cannot run the worker."""

    json_dumps: JSONDumps

    def open(self, pool: Any = None) -> None: ...
    def close(self) -> None: ...
    def execute(self, query: str, params: Params) -> None: ...
    def fetch_one(self, query: str, params: Params) -> Row | None: ...
    def fetch_all(self, query: str, params: Params) -> list[Row]: ...
    def fetch_value(self, query: str, params: Params) -> Any: ...


@runtime_checkable
class AsyncConnector(Protocol):
    """asyncio I/O: defers, reads jobs, and LISTENs, so it can run the worker."""

    json_dumps: JSONDumps

    async def open_async(self, pool: Any = None) -> None: ...
    async def close_async(self) -> None: ...
    async def execute_async(self, query: str, params: Params) -> None: ...
    async def fetch_one_async(self, query: str, params: Params) -> Row | None: ...
    async def fetch_all_async(self, query: str, params: Params) -> list[Row]: ...
    async def fetch_value_async(self, query: str, params: Params) -> Any: ...
    async def listen(
        self,
        channels: list[str],
        on_notify: NotifyCallback,
        on_ready: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None: ...
    def get_sync_connector(self) -> SyncConnector: ...


@runtime_checkable
class CopyConnector(Protocol):
    """A sync connector that can also load a big batch by COPY (psycopg 3 only)."""

    def copy_in(self, plan: CopyPlan) -> list[Any]: ...


@runtime_checkable
class AsyncCopyConnector(Protocol):
    """The same for an async connector."""

    async def copy_in_async(self, plan: CopyPlan) -> list[Any]: ...


class SyncQueryMethods:
    """The query methods of a sync connector, from its one `_run(query, params, fetch)`
    where fetch is "none", "one", "all" or "value" (the first column of the first row,
    or None: a defer's id, with no row dict on the way)."""

    _run: Callable[[str, Params, str], Any]

    def execute(self, query: str, params: Params) -> None:
        self._run(query, params, "none")

    def fetch_one(self, query: str, params: Params) -> Row | None:
        row: Row | None = self._run(query, params, "one")
        return row

    def fetch_all(self, query: str, params: Params) -> list[Row]:
        rows: list[Row] = self._run(query, params, "all")
        return rows

    def fetch_value(self, query: str, params: Params) -> Any:
        return self._run(query, params, "value")


class AsyncQueryMethods:
    """The same for an async connector, from its one `async _run(query, params, fetch)`."""

    _run: Callable[[str, Params, str], Awaitable[Any]]

    async def execute_async(self, query: str, params: Params) -> None:
        await self._run(query, params, "none")

    async def fetch_one_async(self, query: str, params: Params) -> Row | None:
        row: Row | None = await self._run(query, params, "one")
        return row

    async def fetch_all_async(self, query: str, params: Params) -> list[Row]:
        rows: list[Row] = await self._run(query, params, "all")
        return rows

    async def fetch_value_async(self, query: str, params: Params) -> Any:
        return await self._run(query, params, "value")


@dataclass(frozen=True, slots=True)
class CopyPlan:
    """A COPY in one transaction: `before` (its one row joins `params`), COPY the chunks
    of `data` (text format) with `copy`, then `after`, the first column of whose rows is the result.
    Another number of rows than `expected` rolls it all back."""

    before: str
    copy: str
    data: Iterable[str]  # chunks, written as they come
    after: str
    params: dict[str, Any]
    expected: int


COPY_MISMATCH = (
    "the COPY of {expected} jobs could not read back their ids (got {got}); nothing was "
    "deferred: is the connection inside a transaction of its own?"
)


# When a pool hands out only dead connections (each is closed and replaced in turn).
ALL_DEAD = "every pooled connection was dead: is PostgreSQL restarting?"


class LockRace(ConnectorError):
    """Another worker claimed a job of the same lock at the same instant; claim again."""


class ErrorWrapper(ABC):
    """Base of each driver's `wrap_exceptions`: `with wrap_exceptions(secrets):` turns
    the driver's errors into procq_sqla's, with `secrets` masked. A class rather than a
    @contextmanager: no generator per statement on the defer path."""

    __slots__ = ("secrets",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = secrets

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is not None and (translated := self.translate(exc)) is not None:
            raise translated from exc

    @abstractmethod
    def translate(self, exc: BaseException) -> BaseException | None:
        """procq_sqla's exception for the driver's `exc`; None lets `exc` through."""


def translate_error(
    exc: BaseException,
    *,
    sqlstate: str | None,
    constraint: str | None,
    secrets: Iterable[str] = (),
) -> ConnectorError | AlreadyEnqueued:
    """Turn a driver error into procq_sqla's exception (the caller chains `from exc`).

    `secrets` are passwords the connector knows: they are scrubbed from the message even
    where `mask_password` cannot recognise them (a malformed DSN echoed by libpq)."""
    message = " ".join(scrub(str(exc), secrets).split()) or type(exc).__name__  # one line
    if sqlstate == "23505" and constraint == QUEUEING_LOCK_INDEX:
        return AlreadyEnqueued(
            "a job with the same queueing lock is already waiting (AlreadyEnqueued)"
        )
    if sqlstate == "23505" and constraint == LOCK_INDEX:
        return LockRace()
    if sqlstate in ("42P01", "42883") and "procq_" in message:
        return SchemaMissing()
    return ConnectorError(message, sqlstate=sqlstate)


# -- connection parameters and their secrets ---------------------------------------------

_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.I)


def dsn_secrets(dsn: str | None, kwargs: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Every password given in a DSN (URL or key=value) or in keywords, to scrub."""
    found: list[str] = []
    if kwargs and kwargs.get("password"):
        found.append(str(kwargs["password"]))
    if dsn:
        try:
            password = urlsplit(dsn).password if "://" in dsn else None
        except ValueError:
            password = None
        if password:
            found += [password, unquote(password)]
        for match in _KEYWORD_PASSWORD.finditer(dsn):
            value = match.group(1)
            found += [value, value.strip("'").replace("\\'", "'")]
    return tuple(dict.fromkeys(s for s in found if s))


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`mask_password`, plus every known password replaced by '***' wherever it appears."""
    text = mask_password(text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def describe_params(dsn_name: str, dsn: str | None, kwargs: Mapping[str, Any]) -> str:
    """`dsn='postgresql://u:***@h/db', host='h', password='***'`, for a connector's repr."""
    parts = [f"{dsn_name}={mask_password(dsn)!r}"] if dsn else []
    for key, value in kwargs.items():
        shown = "***" if key == "password" else value
        parts.append(f"{key}={shown!r}")
    return ", ".join(parts)


def connect_error(exc: BaseException, connector: str, secrets: Iterable[str]) -> ConnectorError:
    """The error for a connection that could not be made (wrong password, unreachable
    host, bad DSN, unknown keyword), in one line and without any password."""
    detail = " ".join(scrub(str(exc), secrets).split()) or type(exc).__name__
    return ConnectorError(
        f"cannot connect to PostgreSQL ({detail}): check the DSN, keywords or PG* "
        f"environment variables given to {connector}"
    )


TRANSIENT_CONNECT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
TRANSIENT_CONNECT_MESSAGES = (
    "connection refused",
    "no such file or directory",  # a unix socket while the server restarts
    "starting up",
    "shutting down",
    "too many connections",
    "terminating connection",
)


def is_transient_connect_error(exc: BaseException) -> bool:
    """True when a failed connection may well succeed in a moment: the server is
    restarting, shutting a backend down, or out of connection slots (not: a wrong
    password, an unknown host or a bad DSN, which fail at once)."""
    cause = exc.__cause__ or exc
    if getattr(cause, "sqlstate", None) in TRANSIENT_CONNECT_SQLSTATES:
        return True
    text = str(cause).lower()
    return any(marker in text for marker in TRANSIENT_CONNECT_MESSAGES)


def is_idle(conn: Any) -> bool:
    """Open and outside any transaction: libpq's PQTRANS_IDLE (0), read straight from
    psycopg 3's `pgconn` or psycopg2's C method (`conn.info` builds an object per call;
    a closed connection reports PQTRANS_UNKNOWN, or is closed)."""
    pgconn = getattr(conn, "pgconn", None)
    if pgconn is not None:
        return bool(pgconn.transaction_status == 0)
    return not conn.closed and conn.get_transaction_status() == 0


def as_dicts(description: Iterable[Sequence[Any]], rows: Iterable[Sequence[Any]]) -> list[Row]:
    """Rows of a plain DBAPI cursor as dicts by column name (cheaper than a dict-row
    cursor class that builds each row in Python)."""
    names = [column[0] for column in description]
    return [dict(zip(names, row, strict=True)) for row in rows]


def fetch_result(cur: Any, fetch: str) -> Any:
    """What `fetch` ("none", "one", "all", "value") asks of a plain DBAPI cursor that
    just ran a statement (psycopg2's, or psycopg's tuple cursor under SQLAlchemy). Rows
    become dicts here: RealDictCursor builds each row in Python, which cost more than the
    rest of a defer's client side; "value" (a defer's id) builds none."""
    if fetch == "value":
        row = cur.fetchone()
        return None if row is None else row[0]
    if fetch == "one":
        row = cur.fetchone()
        return None if row is None else as_dicts(cur.description, [row])[0]
    if fetch == "all":
        return as_dicts(cur.description, cur.fetchall())
    return None


def has_unread_input(fd: int) -> bool:
    """True when an idle pooled connection's socket holds data nobody asked for.

    Our pooled connections never LISTEN, so that data is the server's goodbye (FATAL
    57P01 then end of file, after pg_terminate_backend or a restart): the connection is
    dead and must be discarded before a statement is sent, which costs no round trip."""
    try:
        if _poll is not None:
            poller = _poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([fd], [], [], 0)
        return bool(readable)
    except (OSError, ValueError):
        return True


_poll = getattr(select, "poll", None)  # not on Windows
