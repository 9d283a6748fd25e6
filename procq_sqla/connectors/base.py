"""The two small protocols every connector implements, and the shared error mapping.

A sync connector can defer and read jobs; an async connector can also LISTEN and so run
the worker. Connectors implement only what they truly support: the type checker and a
clear `WrongConnector` error catch a sync connector given to the worker. Each driver
catches its own errors in one place and hands the facts to `translate_error`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

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


def default_json_dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


@runtime_checkable
class SyncConnector(Protocol):
    """Blocking I/O: defers and reads jobs; cannot run the worker."""

    json_dumps: JSONDumps

    def open(self, pool: Any = None) -> None: ...
    def close(self) -> None: ...
    def execute(self, query: str, params: Params) -> None: ...
    def fetch_one(self, query: str, params: Params) -> Row | None: ...
    def fetch_all(self, query: str, params: Params) -> list[Row]: ...


@runtime_checkable
class AsyncConnector(Protocol):
    """asyncio I/O: defers, reads jobs, and LISTENs, so it can run the worker."""

    json_dumps: JSONDumps

    async def open_async(self, pool: Any = None) -> None: ...
    async def close_async(self) -> None: ...
    async def execute_async(self, query: str, params: Params) -> None: ...
    async def fetch_one_async(self, query: str, params: Params) -> Row | None: ...
    async def fetch_all_async(self, query: str, params: Params) -> list[Row]: ...
    async def listen(
        self,
        channels: list[str],
        on_notify: NotifyCallback,
        on_ready: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None: ...
    def get_sync_connector(self) -> SyncConnector: ...


class LockRace(ConnectorError):
    """Another worker claimed a job of the same lock at the same instant; claim again."""


def translate_error(
    exc: BaseException, *, sqlstate: str | None, constraint: str | None
) -> ConnectorError | AlreadyEnqueued:
    """Turn a driver error into procq_sqla's exception (the caller chains `from exc`)."""
    message = mask_password(str(exc).strip()) or type(exc).__name__
    if sqlstate == "23505" and constraint == QUEUEING_LOCK_INDEX:
        return AlreadyEnqueued(
            "a job with the same queueing lock is already waiting (AlreadyEnqueued)"
        )
    if sqlstate == "23505" and constraint == LOCK_INDEX:
        return LockRace()
    if sqlstate in ("42P01", "42883") and "procq_" in message:
        return SchemaMissing()
    return ConnectorError(message, sqlstate=sqlstate)
