"""`App`: the task registry, the connector, and the entry points (open, defer, worker).

An app is opened once per process. A sync connector serves `defer()`; an async one
serves `defer_async()` and the worker, and lends a blocking twin for `defer()` from
synchronous code. An app whose connector is sync but pairs with an async one (the
SQLAlchemy connector) runs its worker on that pair, so the database is configured once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Generator, Mapping
from functools import cached_property
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from .connectors.base import (
    AsyncConnector,
    JSONDumps,
    SyncConnector,
    is_transient_connect_error,
)
from .exceptions import AppNotOpen, ConnectorError, UnknownTask, WrongConnector
from .manager import JobManager
from .retry import RetryStrategy
from .tasks import Task

P = ParamSpec("P")
R = TypeVar("R")
TaskT = TypeVar("TaskT", bound=Task[..., Any])

WORKER_CONNECT_PATIENCE = 30.0
logger = logging.getLogger("procq_sqla.worker")

WRONG_ASYNC = (
    "{name} is a synchronous connector and cannot {what}: use PsycopgConnector (or "
    "AiopgConnector), e.g. app.with_connector(app.connector.get_worker_connector())"
)


class App:
    """Holds the tasks and the connector; see the README for the whole tour."""

    def __init__(self, *, connector: SyncConnector | AsyncConnector) -> None:
        self.connector = connector
        # decided once: runtime protocol checks cost ~25 µs each, on every defer
        self._sync_io: SyncConnector | None = (
            connector if isinstance(connector, SyncConnector) else None
        )
        self._async_io: AsyncConnector | None = (
            connector if isinstance(connector, AsyncConnector) else None
        )
        self.tasks: dict[str, Task[..., Any]] = {}
        self._open = False
        self._open_async = False
        self._worker_connector: AsyncConnector | None = None

    def __repr__(self) -> str:
        return f"<App connector={self.connector!r} tasks={len(self.tasks)}>"

    # -- tasks ---------------------------------------------------------------------------

    @overload
    def task(self, func: Callable[P, R]) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        retry: bool | int | RetryStrategy | None = False,
        pass_context: bool = False,
        lock: str | None = None,
        queueing_lock: str | None = None,
        timeout: float | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        func: Any = None,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        retry: bool | int | RetryStrategy | None = False,
        pass_context: bool = False,
        lock: str | None = None,
        queueing_lock: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Register a function as a task: `@app.task` or `@app.task(queue=..., ...)`."""
        options: dict[str, Any] = {
            "name": name,
            "queue": queue,
            "priority": priority,
            "retry": retry,
            "pass_context": pass_context,
            "lock": lock,
            "queueing_lock": queueing_lock,
            "timeout": timeout,
        }

        def register(f: Callable[..., Any]) -> Task[..., Any]:
            task: Task[..., Any] = Task(f, app=self, **options)
            self.tasks[task.name] = task
            return task

        return register(func) if func is not None else register

    def periodic(
        self,
        *,
        cron: str,
        periodic_id: str = "",
        max_delay: float = 600.0,
        kwargs: Mapping[str, Any] | None = None,
    ) -> Callable[[TaskT], TaskT]:
        """Defer the task below on a cron schedule (UTC; a sixth field is seconds):
        `@app.periodic(cron="*/5 * * * *")` stacked above `@app.task`. Each tick is
        deferred once across all workers; after downtime only ticks younger than
        `max_delay` seconds are caught up. The task gets the tick as `timestamp=`."""
        from .periodic import register_periodic

        return register_periodic(
            self, cron=cron, periodic_id=periodic_id, max_delay=max_delay, kwargs=kwargs
        )

    def get_task(self, name: str) -> Task[..., Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(f"no task named {name!r} is registered on this app") from None

    def with_connector(self, connector: SyncConnector | AsyncConnector) -> App:
        """An app on another connector that shares this app's task registry."""
        other = App(connector=connector)
        other.tasks = self.tasks
        return other

    @property
    def json_dumps(self) -> JSONDumps:
        return self.connector.json_dumps

    @cached_property
    def job_manager(self) -> JobManager:
        """Reads and writes jobs; one per app, since every defer() goes through it."""
        return JobManager(self)

    # -- opening -------------------------------------------------------------------------

    def open(self, pool_or_engine: Any = None) -> App:
        """Open the connector (or adopt a pool/engine, which close() then leaves alone)."""
        self._blocking().open(pool_or_engine)
        self._open = True
        return self

    def close(self) -> None:
        self._blocking().close()
        self._open = False

    def __enter__(self) -> App:
        if not self._open:
            self.open()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open_async(self, pool: Any = None) -> _AsyncOpening:
        """`await app.open_async()` or `async with app.open_async(): ...`."""
        return _AsyncOpening(self, pool)

    async def _do_open_async(self, pool: Any) -> None:
        await self.async_connector(opening=True).open_async(pool)
        self._open_async = True

    async def close_async(self) -> None:
        connector = self._worker_connector or self.connector
        if isinstance(connector, AsyncConnector):
            await connector.close_async()
        self._open_async = False

    # -- connectors ----------------------------------------------------------------------

    def _blocking(self) -> SyncConnector:
        if self._sync_io is not None:
            return self._sync_io
        assert self._async_io is not None
        return self._async_io.get_sync_connector()

    def sync_connector(self) -> SyncConnector:
        """The connector for blocking calls (raises AppNotOpen before open())."""
        if self._sync_io is not None:
            if not self._open:
                raise AppNotOpen()
            return self._sync_io
        if not (self._open or self._open_async):
            raise AppNotOpen()
        return self._blocking()

    def async_connector(
        self, *, opening: bool = False, what: str = "defer_async"
    ) -> AsyncConnector:
        """The connector for asyncio calls and the worker (the pair of a sync connector)."""
        if self._async_io is not None:
            connector: AsyncConnector = self._async_io
        elif self._worker_connector is not None:
            connector = self._worker_connector
        else:
            getter = getattr(self.connector, "get_worker_connector", None)
            if getter is None:
                raise WrongConnector(
                    WRONG_ASYNC.format(name=type(self.connector).__name__, what=what)
                )
            connector = getter()
            self._worker_connector = connector
        if not opening and not self._open_async:
            raise AppNotOpen("the app is not open for asyncio: call `await app.open_async()` first")
        return connector

    # -- worker --------------------------------------------------------------------------

    async def run_worker_async(self, **options: Any) -> None:
        """Run a worker in this event loop (see `Worker` for the options)."""
        from .worker import Worker

        connector = self.async_connector(opening=True, what="run the worker")
        opened_here = not self._open_async
        # a sync connector (SQLAlchemy's) also serves defer() from inside the tasks
        opened_sync = self._sync_io is not None and not self._open
        if opened_here:
            await self._open_for_worker()
        if opened_sync:
            await asyncio.to_thread(self.open)
        try:
            await Worker(self, connector, **options).run()
        finally:
            if opened_sync:
                await asyncio.to_thread(self.close)
            if opened_here:
                await self.close_async()

    async def _open_for_worker(self, patience: float = WORKER_CONNECT_PATIENCE) -> None:
        """Open for the worker, waiting out a database that is restarting or full for up
        to `patience` seconds (a misconfiguration still fails at once)."""
        deadline = time.monotonic() + patience
        delay = 0.2
        while True:
            try:
                await self._do_open_async(None)
                return
            except ConnectorError as exc:
                if not is_transient_connect_error(exc) or time.monotonic() > deadline:
                    raise
                logger.warning("database not reachable yet (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def run_worker(self, **options: Any) -> None:
        """Run a worker until stopped (or, with wait=False, until the queues are empty)."""
        self.async_connector(opening=True, what="run the worker")
        asyncio.run(self.run_worker_async(**options))


class _AsyncOpening:
    """Makes `open_async()` both awaitable and an async context manager."""

    def __init__(self, app: App, pool: Any) -> None:
        self.app = app
        self.pool = pool

    def __await__(self) -> Generator[Any, None, App]:
        yield from self.app._do_open_async(self.pool).__await__()
        return self.app

    async def __aenter__(self) -> App:
        await self.app._do_open_async(self.pool)
        return self.app

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.app.close_async()
