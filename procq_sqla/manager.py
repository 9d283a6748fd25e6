"""`JobManager`: every read and write of jobs outside the worker, sync and async.

Each operation is a named query plus a pure function shaping its result, so the sync
and async methods are one line each around the same plan. Deferral can go through the
app's connector or through any object with the same methods (an application's session,
see `contrib.sqlalchemy`), which is how a job joins the caller's transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from .connectors.base import AsyncCopyConnector, CopyConnector, CopyPlan
from .exceptions import AlreadyEnqueued, InvalidOption, JobNotFound
from .jobs import (
    Job,
    JobOptions,
    batch_defer_params,
    copy_defer_data,
    defer_params,
    is_plain,
    match_batch_ids,
)
from .sql import queries

if TYPE_CHECKING:
    from .app import App
    from .connectors.base import AsyncConnector, Row, SyncConnector

T = TypeVar("T")
DEFAULT_LIST_LIMIT = 100
PRUNE_BATCH = 10_000
# From this many jobs (without a queueing lock) a batch defer goes in by COPY: four more
# round trips than one INSERT, and several times faster per row.
COPY_MIN_JOBS = 1_000
FINISHED_STATUSES = ("succeeded", "failed", "cancelled", "aborted")
JOB_STATUSES = ("todo", "doing", *FINISHED_STATUSES)

logger = logging.getLogger("procq_sqla.manager")


@dataclass(slots=True)  # not frozen: its __init__ would cost a setattr call per field
class Plan(Generic[T]):
    """A query, its parameters, and how to shape its rows; or, with `value=True`, its
    first column of its first row (a defer's id: no row dict on the hottest path)."""

    query: str
    params: dict[str, Any]
    shape: Callable[[Any], T]
    value: bool = False


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


def _rows(rows: list[Row]) -> list[Row]:
    return rows


def _first_row(rows: list[Row]) -> Row:
    return rows[0]


def _count(rows: list[Row]) -> int:
    return len(rows)


def _versions(rows: list[Row]) -> list[str]:
    return [str(row["version_num"]) for row in rows]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Job counts of one queue by status, and the age of its oldest runnable job."""

    queue: str
    counts: dict[str, int]
    oldest_waiting_age: float | None

    @classmethod
    def from_row(cls, row: Row) -> QueueStats:
        counts = {status: int(row[status]) for status in JOB_STATUSES}
        age = row["oldest_waiting_age"]
        return cls(str(row["queue"]), counts, None if age is None else float(age))


def _queue_stats(rows: list[Row]) -> list[QueueStats]:
    return [QueueStats.from_row(row) for row in rows]


@dataclass(slots=True)
class HealthReport:
    """What `procq healthchecks` looks at, gathered by `JobManager.health()`."""

    server_version: str = ""
    database: str = ""
    schema_present: bool = False
    head: str = ""
    current_revisions: list[str] = field(default_factory=list)
    missing_revisions: list[str] = field(default_factory=list)
    workers_total: int = 0
    workers_alive: int = 0
    oldest_waiting_age: float | None = None

    @property
    def schema_at_head(self) -> bool:
        return self.schema_present and not self.missing_revisions


def missing_revisions_from(recorded: Sequence[str]) -> tuple[str, list[str], list[str]]:
    """procq's head, its recorded revision(s) and its revisions not yet applied (oldest
    first), given the version numbers an Alembic version table holds (an application's
    shared table holds its own too)."""
    from alembic.script import ScriptDirectory

    from .migrations import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    assert head is not None
    known = {rev.revision for rev in script.walk_revisions()}
    ours = [v for v in recorded if v in known]
    current = ours[0] if ours else None
    pending = [
        rev.revision
        for rev in script.iterate_revisions("head", current or "base")
        if rev.revision != current
    ]
    return head, ours, pending[::-1]


def health_steps(stalled_after: float) -> Generator[Plan[Any], Any, HealthReport]:
    """The health checks as I/O-free steps: yields plans, receives their results."""
    report = HealthReport()
    server: Row = yield Plan(queries["server_version"], {}, _first_row)
    report.server_version, report.database = str(server["version"]), str(server["database"])
    tables: Row = yield Plan(queries["schema_version_tables"], {}, _first_row)
    report.schema_present = bool(tables["jobs"] and tables["workers"])
    recorded: list[str] = []
    if tables["own"]:
        recorded = yield Plan(queries["own_schema_versions"], {}, _versions)
    elif tables["shared"]:
        recorded = yield Plan(queries["shared_schema_versions"], {}, _versions)
    report.head, report.current_revisions, report.missing_revisions = missing_revisions_from(
        recorded
    )
    if not report.schema_present:
        return report
    workers: Row = yield Plan(queries["worker_summary"], {"seconds": stalled_after}, _first_row)
    report.workers_total, report.workers_alive = int(workers["total"]), int(workers["alive"])
    age: Row = yield Plan(queries["oldest_waiting_job_age"], {}, _first_row)
    report.oldest_waiting_age = None if age["age"] is None else float(age["age"])
    return report


class JobManager:
    """Defer, read, cancel, abort and retry jobs; `*_async` twins for asyncio code."""

    def __init__(self, app: App) -> None:
        self.app = app

    # -- running plans ------------------------------------------------------------------

    def _run(self, plan: Plan[T], via: SyncConnector | None = None) -> T:
        connector = via if via is not None else self.app.sync_connector()
        if plan.value:
            return plan.shape(connector.fetch_value(plan.query, plan.params))
        return plan.shape(connector.fetch_all(plan.query, plan.params))

    async def _run_async(self, plan: Plan[T], via: AsyncConnector | None = None) -> T:
        connector = via if via is not None else self.app.async_connector()
        if plan.value:
            return plan.shape(await connector.fetch_value_async(plan.query, plan.params))
        return plan.shape(await connector.fetch_all_async(plan.query, plan.params))

    # -- plans ---------------------------------------------------------------------------

    @staticmethod
    def plan_defer(task_name: str, options: JobOptions, args_json: str) -> Plan[int]:
        plain = is_plain(options)
        query = queries["defer_plain_job" if plain else "defer_job"]
        return Plan(query, defer_params(task_name, options, args_json, plain=plain), int, True)

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
    def plan_copy_defer(
        task_name: str, options: JobOptions, args_json: Sequence[str]
    ) -> CopyPlan | None:
        """The COPY path of a big batch, or None where the INSERT is the one to use: a
        queueing lock (a conflict must skip or raise per job), or a small batch."""
        if options.queueing_lock is not None or len(args_json) < COPY_MIN_JOBS:
            return None
        return CopyPlan(
            queries["copy_jobs_start"],
            queries["copy_jobs"],
            copy_defer_data(task_name, options, args_json),
            queries["copy_jobs_ids"],
            {"queue": options.queue},
            len(args_json),
        )

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
    def plan_queue_stats() -> Plan[list[QueueStats]]:
        return Plan(queries["queue_stats"], {}, _queue_stats)

    @staticmethod
    def plan_prune(
        older_than: float, statuses: Sequence[str] = FINISHED_STATUSES, limit: int = PRUNE_BATCH
    ) -> Plan[int]:
        """One batch of pruning: returns how many jobs it deleted."""
        if older_than < 0:
            raise InvalidOption(f"older_than must not be negative, not {older_than}")
        unknown = [s for s in statuses if s not in FINISHED_STATUSES]
        if unknown or not statuses:
            raise InvalidOption(
                f"only finished jobs can be pruned ({', '.join(FINISHED_STATUSES)}), "
                f"not {', '.join(unknown) or 'no status'}"
            )
        params = {"seconds": older_than, "statuses": list(statuses), "limit": limit}
        return Plan(queries["prune_jobs"], params, _count)

    # -- multi-step programs ------------------------------------------------------------

    def _drive(self, steps: Generator[Plan[Any], Any, T]) -> T:
        try:
            plan = next(steps)
            while True:
                plan = steps.send(self._run(plan))
        except StopIteration as done:
            result: T = done.value
            return result

    async def _drive_async(self, steps: Generator[Plan[Any], Any, T]) -> T:
        try:
            plan = next(steps)
            while True:
                plan = steps.send(await self._run_async(plan))
        except StopIteration as done:
            result: T = done.value
            return result

    # -- sync API ------------------------------------------------------------------------

    def defer(self, task_name: str, options: JobOptions, args_json: str, via: Any = None) -> int:
        job_id = self._run(self.plan_defer(task_name, options, args_json), via)
        log_deferred(task_name, options, [job_id])
        return job_id

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
        copy = self.plan_copy_defer(task_name, options, args_json) if via is None else None
        connector = self.app.sync_connector()
        if copy is not None and isinstance(connector, CopyConnector):
            ids: list[int | None] = connector.copy_in(copy)
        else:
            plan = self.plan_batch_defer(task_name, options, args_json, ignore_already_enqueued)
            ids = self._run(plan, via)
        log_deferred(task_name, options, ids)
        return ids

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

    def queue_stats(self) -> list[QueueStats]:
        """Per queue: counts by status and the oldest runnable job's age (seconds)."""
        return self._run(self.plan_queue_stats())

    def prune(
        self,
        older_than: float,
        *,
        statuses: Sequence[str] = FINISHED_STATUSES,
        batch_size: int = PRUNE_BATCH,
    ) -> int:
        """Delete jobs finished more than `older_than` seconds ago, in bounded batches
        (each its own short transaction); returns how many were deleted."""
        total = 0
        while True:
            deleted = self._run(self.plan_prune(older_than, statuses, batch_size))
            total += deleted
            if deleted < batch_size:
                return total

    def health(self, *, stalled_after: float = 30.0) -> HealthReport:
        """Server version, schema revisions against head, live workers, oldest waiting job."""
        return self._drive(health_steps(stalled_after))

    # -- async API -----------------------------------------------------------------------

    async def defer_async(
        self, task_name: str, options: JobOptions, args_json: str, via: Any = None
    ) -> int:
        job_id = await self._run_async(self.plan_defer(task_name, options, args_json), via)
        log_deferred(task_name, options, [job_id])
        return job_id

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
        copy = self.plan_copy_defer(task_name, options, args_json) if via is None else None
        connector = self.app.async_connector()
        if copy is not None and isinstance(connector, AsyncCopyConnector):
            ids: list[int | None] = await connector.copy_in_async(copy)
        else:
            plan = self.plan_batch_defer(task_name, options, args_json, ignore_already_enqueued)
            ids = await self._run_async(plan, via)
        log_deferred(task_name, options, ids)
        return ids

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

    async def queue_stats_async(self) -> list[QueueStats]:
        return await self._run_async(self.plan_queue_stats())

    async def prune_async(
        self,
        older_than: float,
        *,
        statuses: Sequence[str] = FINISHED_STATUSES,
        batch_size: int = PRUNE_BATCH,
    ) -> int:
        total = 0
        while True:
            deleted = await self._run_async(self.plan_prune(older_than, statuses, batch_size))
            total += deleted
            if deleted < batch_size:
                return total

    async def health_async(self, *, stalled_after: float = 30.0) -> HealthReport:
        return await self._drive_async(health_steps(stalled_after))


def log_deferred(task_name: str, options: JobOptions, ids: Sequence[int | None]) -> None:
    """The `job_deferred` event (one record per call; a batch lists its ids). Inside a
    session the job exists only once the caller commits."""
    if not logger.isEnabledFor(logging.INFO):
        return
    extra: dict[str, Any] = {"event": "job_deferred", "task": task_name, "queue": options.queue}
    if len(ids) == 1:
        extra["job_id"] = ids[0]
        logger.info("job %s %s deferred", ids[0], task_name, extra=extra)
    else:
        extra["job_ids"] = list(ids)
        logger.info("%d jobs of %s deferred", len(ids), task_name, extra=extra)


def raise_if_skipped(ids: list[int | None], queueing_lock: str | None) -> list[int]:
    """Batch defers without `ignore_already_enqueued` never skip; make that explicit."""
    if None in ids:
        raise AlreadyEnqueued(queueing_lock=queueing_lock)
    return cast("list[int]", ids)
