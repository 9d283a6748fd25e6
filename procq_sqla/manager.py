"""`JobManager`: every read and write of jobs outside the worker, sync and async.

Each operation is a named query plus a pure function shaping its result, so the sync
and async methods are one line each around the same plan. Deferral can go through the
app's connector or through any object with the same methods (an application's session,
see `contrib.sqlalchemy`), which is how a job joins the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .exceptions import AlreadyEnqueued, InvalidOption, JobNotFound
from .jobs import Job, JobOptions, batch_defer_params, defer_params, match_batch_ids
from .sql import queries

if TYPE_CHECKING:
    from .app import App
    from .connectors.base import AsyncConnector, Row, SyncConnector

T = TypeVar("T")
DEFAULT_LIST_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Plan(Generic[T]):
    """A query, its parameters, whether it returns rows, and how to shape them."""

    query: str
    params: dict[str, Any]
    shape: Callable[[list[Row]], T]


def _first_id(rows: list[Row]) -> int:
    return int(rows[0]["id"])


def _found(rows: list[Row]) -> bool:
    return bool(rows)


def _job_or_raise(job_id: int) -> Callable[[list[Row]], Job]:
    def shape(rows: list[Row]) -> Job:
        if not rows:
            raise JobNotFound(f"no job with id {job_id}")
        return Job.from_row(rows[0])

    return shape


def _jobs(rows: list[Row]) -> list[Job]:
    return [Job.from_row(row) for row in rows]


class JobManager:
    """Defer, read, cancel, abort and retry jobs; `*_async` twins for asyncio code."""

    def __init__(self, app: App) -> None:
        self.app = app

    # -- running plans ------------------------------------------------------------------

    def _run(self, plan: Plan[T], via: SyncConnector | None = None) -> T:
        connector = via if via is not None else self.app.sync_connector()
        return plan.shape(connector.fetch_all(plan.query, plan.params))

    async def _run_async(self, plan: Plan[T], via: AsyncConnector | None = None) -> T:
        connector = via if via is not None else self.app.async_connector()
        return plan.shape(await connector.fetch_all_async(plan.query, plan.params))

    # -- plans ---------------------------------------------------------------------------

    @staticmethod
    def plan_defer(task_name: str, options: JobOptions, args_json: str) -> Plan[int]:
        return Plan(queries["defer_job"], defer_params(task_name, options, args_json), _first_id)

    @staticmethod
    def plan_batch_defer(
        task_name: str,
        options: JobOptions,
        args_json: Sequence[str],
        ignore_already_enqueued: bool = False,
    ) -> Plan[list[int | None]]:
        params = batch_defer_params(task_name, options, args_json)
        name = "batch_defer_jobs_skip_enqueued" if ignore_already_enqueued else "batch_defer_jobs"
        locks = list(params["queueing_locks"])
        return Plan(queries[name], params, lambda rows: match_batch_ids(locks, rows))

    @staticmethod
    def plan_get(job_id: int) -> Plan[Job]:
        return Plan(queries["get_job"], {"id": job_id}, _job_or_raise(job_id))

    @staticmethod
    def plan_list(
        *,
        id: int | None = None,
        queue: str | None = None,
        task_name: str | None = None,
        status: str | None = None,
        lock: str | None = None,
        queueing_lock: str | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
    ) -> Plan[list[Job]]:
        if limit < 1:
            raise InvalidOption(f"limit must be positive, not {limit}")
        params = {
            "id": id,
            "queue": queue,
            "task_name": task_name,
            "status": status,
            "lock": lock,
            "queueing_lock": queueing_lock,
            "limit": limit,
        }
        return Plan(queries["list_jobs"], params, _jobs)

    @staticmethod
    def plan_simple(name: str, job_id: int) -> Plan[bool]:
        return Plan(queries[name], {"id": job_id}, _found)

    @staticmethod
    def plan_counts() -> Plan[list[Row]]:
        return Plan(queries["count_jobs"], {}, lambda rows: rows)

    # -- sync API ------------------------------------------------------------------------

    def defer(self, task_name: str, options: JobOptions, args_json: str, via: Any = None) -> int:
        return self._run(self.plan_defer(task_name, options, args_json), via)

    def batch_defer(
        self,
        task_name: str,
        options: JobOptions,
        args_json: Sequence[str],
        *,
        ignore_already_enqueued: bool = False,
        via: Any = None,
    ) -> list[int | None]:
        if not args_json:
            return []
        plan = self.plan_batch_defer(task_name, options, args_json, ignore_already_enqueued)
        return self._run(plan, via)

    def get_job(self, job_id: int) -> Job:
        return self._run(self.plan_get(job_id))

    def list_jobs(self, **filters: Any) -> list[Job]:
        return self._run(self.plan_list(**filters))

    def cancel(self, job_id: int, *, abort: bool = False) -> bool:
        """Cancel a waiting job; with abort=True also abort it if it is running."""
        if self._run(self.plan_simple("cancel_job", job_id)):
            return True
        return abort and self._run(self.plan_simple("request_abort", job_id))

    def abort(self, job_id: int) -> bool:
        return self._run(self.plan_simple("request_abort", job_id))

    def retry(self, job_id: int) -> bool:
        return self._run(self.plan_simple("retry_job", job_id))

    def count_jobs(self) -> list[Row]:
        return self._run(self.plan_counts())

    # -- async API -----------------------------------------------------------------------

    async def defer_async(
        self, task_name: str, options: JobOptions, args_json: str, via: Any = None
    ) -> int:
        return await self._run_async(self.plan_defer(task_name, options, args_json), via)

    async def batch_defer_async(
        self,
        task_name: str,
        options: JobOptions,
        args_json: Sequence[str],
        *,
        ignore_already_enqueued: bool = False,
        via: Any = None,
    ) -> list[int | None]:
        if not args_json:
            return []
        plan = self.plan_batch_defer(task_name, options, args_json, ignore_already_enqueued)
        return await self._run_async(plan, via)

    async def get_job_async(self, job_id: int) -> Job:
        return await self._run_async(self.plan_get(job_id))

    async def list_jobs_async(self, **filters: Any) -> list[Job]:
        return await self._run_async(self.plan_list(**filters))

    async def cancel_async(self, job_id: int, *, abort: bool = False) -> bool:
        if await self._run_async(self.plan_simple("cancel_job", job_id)):
            return True
        return abort and await self._run_async(self.plan_simple("request_abort", job_id))

    async def abort_async(self, job_id: int) -> bool:
        return await self._run_async(self.plan_simple("request_abort", job_id))

    async def retry_async(self, job_id: int) -> bool:
        return await self._run_async(self.plan_simple("retry_job", job_id))

    async def count_jobs_async(self) -> list[Row]:
        return await self._run_async(self.plan_counts())


def raise_if_skipped(ids: list[int | None], queueing_lock: str | None) -> list[int]:
    """Batch defers without `ignore_already_enqueued` never skip; make that explicit."""
    if any(i is None for i in ids):
        raise AlreadyEnqueued(queueing_lock=queueing_lock)
    return [i for i in ids if i is not None]
