"""Periodic tasks: `@app.periodic(cron=...)` stacked on `@app.task` defers a job per tick.

Every worker runs a deferrer for the app's periodic tasks. A tick is claimed and its job
inserted in one statement keyed on (task, periodic id, tick timestamp), so each tick is
deferred exactly once however many workers run. After downtime, a worker catches up only
the ticks younger than the schedule's `max_delay`. Cron expressions are parsed by
croniter, in UTC: five fields, or six with seconds as the last field.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .exceptions import InvalidOption
from .jobs import serialize_args
from .sql import queries

if TYPE_CHECKING:
    from .app import App
    from .connectors.base import AsyncConnector, Row
    from .tasks import Task

logger = logging.getLogger("procq_sqla.periodic")

TaskT = TypeVar("TaskT", bound="Task[..., Any]")
DEFAULT_MAX_DELAY = 600.0
MAX_CATCH_UP_TICKS = 1000  # per schedule and per pass: a seconds-cron after a long outage
MAX_SLEEP = 60.0
TICKS_KEPT_EXTRA = 3600  # keep claimed ticks this much longer than max_delay (clock skew)
PRUNE_EVERY = 3600.0
_ATTRIBUTE = "_procq_periodic"


def _croniter() -> Any:
    try:
        from croniter import croniter
    except ImportError as exc:  # pragma: no cover - croniter ships with the cron extra
        raise InvalidOption("periodic tasks need croniter: pip install 'procq_sqla[cron]'") from exc
    return croniter


@dataclass(frozen=True, slots=True)
class PeriodicSchedule:
    """One cron schedule of one task, with the fixed arguments its jobs get."""

    task: Task[..., Any]
    cron: str
    periodic_id: str = ""
    max_delay: float = DEFAULT_MAX_DELAY
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def ticks(self, after: float, until: float) -> list[int]:
        """Tick timestamps t with after < t <= until, at most the newest MAX_CATCH_UP_TICKS."""
        found: list[int] = []
        iterator = _croniter()(self.cron, after)
        while True:
            tick = iterator.get_next(float)
            if tick > until:
                return found[-MAX_CATCH_UP_TICKS:]
            found.append(int(tick))

    def next_tick(self, now: float) -> float:
        return float(_croniter()(self.cron, now).get_next(float))

    def job_args(self, timestamp: int) -> str:
        return serialize_args({**self.kwargs, "timestamp": timestamp}, self.task.app.json_dumps)


def register_periodic(
    app: App,
    *,
    cron: str,
    periodic_id: str = "",
    max_delay: float = DEFAULT_MAX_DELAY,
    kwargs: Mapping[str, Any] | None = None,
) -> Callable[[TaskT], TaskT]:
    """The decorator behind `app.periodic`: validates now, attaches the schedule to the task."""
    if not isinstance(cron, str) or not _croniter().is_valid(cron):
        raise InvalidOption(
            f"{cron!r} is not a valid cron expression: use five fields "
            "('*/5 * * * *') or six with seconds last ('* * * * * */10')"
        )
    if max_delay < 0:
        raise InvalidOption(f"max_delay must be zero or more seconds, not {max_delay}")
    if "timestamp" in (kwargs or {}):
        raise InvalidOption("'timestamp' is given by the schedule; remove it from kwargs")

    def decorate(task: TaskT) -> TaskT:
        from .tasks import Task

        if not isinstance(task, Task):
            raise InvalidOption(
                f"@app.periodic(...) goes above @app.task(...): it takes a task, not {task!r}"
            )
        if task.app.tasks is not app.tasks:
            raise InvalidOption(f"task {task.name!r} belongs to another app")
        existing = schedules_of(task)
        if any(s.periodic_id == periodic_id for s in existing):
            raise InvalidOption(
                f"task {task.name!r} already has a schedule with periodic_id "
                f"{periodic_id!r}: give each schedule of a task its own periodic_id"
            )
        schedule = PeriodicSchedule(task, cron, periodic_id, float(max_delay), dict(kwargs or {}))
        setattr(task, _ATTRIBUTE, (*existing, schedule))
        return task

    return decorate


def schedules_of(task: Task[..., Any]) -> tuple[PeriodicSchedule, ...]:
    found: tuple[PeriodicSchedule, ...] = getattr(task, _ATTRIBUTE, ())
    return found


def app_schedules(app: App) -> list[PeriodicSchedule]:
    """Every schedule of every task registered on the app."""
    return [s for task in app.tasks.values() for s in schedules_of(task)]


def defer_params(due: list[tuple[PeriodicSchedule, int]]) -> dict[str, Any]:
    """Parallel arrays for `defer_periodic_jobs` (pure)."""
    options = [s.task.options for s, _ in due]
    return {
        "task_names": [s.task.name for s, _ in due],
        "periodic_ids": [s.periodic_id for s, _ in due],
        "timestamps": [t for _, t in due],
        "queues": [o.queue for o in options],
        "args": [s.job_args(t) for s, t in due],
        "priorities": [o.priority for o in options],
        "locks": [o.lock for o in options],
        "queueing_locks": [o.queueing_lock for o in options],
    }


class PeriodicDeferrer:
    """Defers the jobs of due ticks; one per worker, run as a supervised side task."""

    def __init__(
        self,
        connector: AsyncConnector,
        schedules: list[PeriodicSchedule],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.connector = connector
        self.schedules = schedules
        self.clock = clock

    async def run(self) -> None:
        """Catch up the ticks younger than max_delay, then defer each tick as it comes."""
        now = self.clock()
        seen = {id(s): now - s.max_delay for s in self.schedules}
        pruned_at = -float("inf")
        while True:
            now = self.clock()
            if now - pruned_at >= PRUNE_EVERY:
                await self.prune(now)
                pruned_at = now
            due = [(s, t) for s in self.schedules for t in s.ticks(seen[id(s)], now)]
            if due:
                await self.defer(due)
            for schedule in self.schedules:
                seen[id(schedule)] = now
            wake_at = min(s.next_tick(now) for s in self.schedules)
            await asyncio.sleep(min(max(wake_at - self.clock(), 0.0), MAX_SLEEP))

    async def defer(self, due: list[tuple[PeriodicSchedule, int]]) -> list[Row]:
        """Claim the ticks and insert their jobs in one statement; returns the new jobs."""
        rows = await self.connector.fetch_all_async(
            queries["defer_periodic_jobs"], defer_params(due)
        )
        for row in rows:
            logger.info(
                "periodic job %s %s deferred for tick %s",
                row["id"],
                row["task_name"],
                row["args"].get("timestamp"),
                extra={
                    "event": "periodic_job_deferred",
                    "job_id": row["id"],
                    "task": row["task_name"],
                    "timestamp": row["args"].get("timestamp"),
                },
            )
        return rows

    async def prune(self, now: float) -> None:
        """Forget claimed ticks no worker would defer any more."""
        oldest = max(s.max_delay for s in self.schedules) + TICKS_KEPT_EXTRA
        await self.connector.execute_async(
            queries["prune_periodic_defers"], {"before": int(now - oldest)}
        )
