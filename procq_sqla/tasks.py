"""`Task`: a registered function plus its defaults, and the ways to defer it.

`task.defer(**kwargs)` inserts a job through the app's connector;
`task.configure(..., session=s).defer(...)` inserts it on the caller's own SQLAlchemy
session or connection, inside its transaction. Arguments are checked as JSON and options
validated before any I/O.
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .connectors.base import default_json_dumps, default_json_dumps_many
from .exceptions import InvalidOption
from .jobs import BatchArgs, JobOptions, check_task_name, resolve_schedule, serialize_args
from .manager import raise_if_skipped
from .retry import RetryStrategy, get_retry_strategy

if TYPE_CHECKING:
    from .app import App

P = ParamSpec("P")
R = TypeVar("R")


class Task(Generic[P, R]):
    """A function the worker can run, registered on an app with `@app.task`."""

    def __init__(
        self,
        func: Callable[P, R],
        *,
        app: App,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        retry: bool | int | RetryStrategy | None = False,
        pass_context: bool = False,
        lock: str | None = None,
        queueing_lock: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.func = func
        self.app = app
        self.name = check_task_name(
            f"{func.__module__}.{func.__qualname__}" if name is None else name
        )
        self.options = JobOptions(
            queue=queue, priority=priority, lock=lock, queueing_lock=queueing_lock
        ).validated()
        self.retry_strategy = get_retry_strategy(retry)
        self.pass_context = pass_context
        if timeout is not None and timeout <= 0:
            raise InvalidOption(f"timeout must be positive, not {timeout}")
        self.timeout = timeout
        self.is_async = inspect.iscoroutinefunction(func)
        # the task's own options need no configure() per call: defer() is a hot path
        self._plain = Deferrer(self, self.options)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options.queue!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Calling a task runs its function here and now, without a job."""
        return self.func(*args, **kwargs)

    def configure(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        lock: str | None = None,
        queueing_lock: str | None = None,
        schedule_at: dt.datetime | None = None,
        schedule_in: Mapping[str, float] | None = None,
        session: Any = None,
    ) -> Deferrer:
        """Options for the next defer(s): any of them overrides the task's default."""
        changes: dict[str, Any] = {
            "scheduled_at": resolve_schedule(schedule_at, schedule_in),
        }
        for key, value in (
            ("queue", queue),
            ("priority", priority),
            ("lock", lock),
            ("queueing_lock", queueing_lock),
        ):
            if value is not None:
                changes[key] = value
        return Deferrer(self, self.options.replace(**changes).validated(), session)

    def defer(self, **kwargs: Any) -> int:
        return self._plain.defer(**kwargs)

    async def defer_async(self, **kwargs: Any) -> int:
        return await self._plain.defer_async(**kwargs)

    def batch_defer(
        self, *kwargs_list: Mapping[str, Any], ignore_already_enqueued: bool = False
    ) -> list[int]:
        return self._plain.batch_defer(
            *kwargs_list, ignore_already_enqueued=ignore_already_enqueued
        )

    async def batch_defer_async(
        self, *kwargs_list: Mapping[str, Any], ignore_already_enqueued: bool = False
    ) -> list[int]:
        return await self._plain.batch_defer_async(
            *kwargs_list, ignore_already_enqueued=ignore_already_enqueued
        )


class Deferrer:
    """A task with its options fixed by `configure()`; defers one or many jobs."""

    def __init__(self, task: Task[..., Any], options: JobOptions, session: Any = None) -> None:
        self.task = task
        self.options = options
        self.session = session

    def _dump_all(self, kwargs_list: tuple[Mapping[str, Any], ...]) -> BatchArgs:
        """The arguments' JSON, serialized as it is read (see `BatchArgs`)."""
        dumps = self.task.app.json_dumps
        many = default_json_dumps_many if dumps is default_json_dumps else None
        return BatchArgs(kwargs_list, dumps, many)

    def _via_sync(self) -> Any:
        if self.session is None:
            return None
        from .contrib.sqlalchemy import session_executor

        return session_executor(self.session)

    def _via_async(self) -> Any:
        if self.session is None:
            return None
        from .contrib.sqlalchemy import async_session_executor

        return async_session_executor(self.session)

    def defer(self, **kwargs: Any) -> int:
        app = self.task.app
        args_json = serialize_args(kwargs, app.json_dumps)
        return app.job_manager.defer(self.task.name, self.options, args_json, via=self._via_sync())

    async def defer_async(self, **kwargs: Any) -> int:
        app = self.task.app
        args_json = serialize_args(kwargs, app.json_dumps)
        return await app.job_manager.defer_async(
            self.task.name, self.options, args_json, via=self._via_async()
        )

    def batch_defer(
        self, *kwargs_list: Mapping[str, Any], ignore_already_enqueued: bool = False
    ) -> list[int]:
        """Defer many jobs in one statement; returns their ids in order. With
        `ignore_already_enqueued=True`, jobs whose queueing lock is taken are skipped
        (and left out of the returned list) instead of failing the whole batch."""
        dumped = self._dump_all(kwargs_list)
        ids = self.task.app.job_manager.batch_defer(
            self.task.name,
            self.options,
            dumped,
            ignore_already_enqueued=ignore_already_enqueued,
            via=self._via_sync(),
        )
        return self._ids(ids, ignore_already_enqueued)

    async def batch_defer_async(
        self, *kwargs_list: Mapping[str, Any], ignore_already_enqueued: bool = False
    ) -> list[int]:
        dumped = self._dump_all(kwargs_list)
        ids = await self.task.app.job_manager.batch_defer_async(
            self.task.name,
            self.options,
            dumped,
            ignore_already_enqueued=ignore_already_enqueued,
            via=self._via_async(),
        )
        return self._ids(ids, ignore_already_enqueued)

    def _ids(self, ids: list[int | None], ignore_already_enqueued: bool) -> list[int]:
        if ignore_already_enqueued:
            return [i for i in ids if i is not None]
        return raise_if_skipped(ids, self.options.queueing_lock)
