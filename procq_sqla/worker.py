"""The worker: claim → run → record, in small steps, with batching on both ends.

One loop claims the free slots in one statement, and while jobs are short a lead of
claimed jobs beyond them (given back when they stop being short); each slot is one
asyncio task running job after job (`def` jobs handed to a pool thread a few at a time,
never blocking the loop); outcomes are queued and written by a flusher in one statement
per batch, so under load a batch grows by itself while the previous one is being
written, and at rest an outcome is written at once. Side tasks (LISTEN, heartbeat +
rescue of dead workers' jobs, abort polling, start marks of jobs claimed ahead) are
supervised for the whole life of the worker: a database outage is logged, backed off
and survived, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .connectors.base import LockRace
from .exceptions import (
    AlreadyEnqueued,
    ConnectorError,
    InvalidOption,
    JobAborted,
    SchemaMissing,
    TaskTimeout,
)
from .jobs import Job, JobContext
from .periodic import PeriodicDeferrer, app_schedules
from .rescue import rescue_stalled_jobs
from .sql import queries

if TYPE_CHECKING:
    from .app import App
    from .connectors.base import AsyncConnector
    from .tasks import Task

logger = logging.getLogger("procq_sqla.worker")

DeleteJobs = Literal["never", "successful", "always"]
JOBS_CHANNEL = "procq_jobs"
ABORT_CHANNEL = "procq_abort"
MAX_ERROR_LENGTH = 20_000
# Claiming ahead: while jobs are short, a worker claims more than its free slots, enough
# for about CLAIM_AHEAD_HORIZON seconds of work (at most MAX_CLAIM_AHEAD jobs), so one
# statement feeds many jobs; a worker of long jobs claims no more than its free slots and
# never sits on jobs another worker could start.
CLAIM_AHEAD_HORIZON = 0.02
MAX_CLAIM_AHEAD = 200
# Jobs claimed ahead go back to the queue when no slot took one for this long (the jobs
# turned out long): another worker may be idle.
GIVE_BACK_AFTER = 0.1
# How long a stopping worker tries to give back its jobs claimed ahead (in an outage the
# rescue does it later).
RELEASE_AT_STOP_TIMEOUT = 5.0
# How long a stopping worker keeps trying to record outcomes in an outage (the rescue
# re-runs the rest once its heartbeat expires), each attempt cut at that deadline so that
# a pool waiting for a connection cannot add its own timeout; then how long it tries to
# unregister.
OUTCOMES_AT_STOP_TIMEOUT = 30.0
UNREGISTER_AT_STOP_TIMEOUT = 5.0
# A claim still waiting this long after a stop is stuck in an outage (the pool waits up to
# its own timeout for a connection): it is cancelled, and the stop goes on.
STUCK_CLAIM_AT_STOP = 5.0
# A job claimed ahead has no started_at until its outcome is written; one still running
# after MARK_STARTED_AFTER s gets it then, so that a rescue knows it had started.
MARK_STARTED_AFTER = 0.1
# A slot hands its thread up to this many claimed `def` jobs at once (one hand-over and
# one wake-up of the event loop per run of jobs, not per job).
MAX_THREAD_RUN = 16
NEVER_STARTED_ABORT = "aborted on request before it started"


@dataclass(slots=True)
class Outcome:
    """What became of one run of a job, waiting to be written."""

    job: Job
    status: str  # succeeded | failed | aborted | todo (retry)
    error: str | None = None
    delay: float = 0.0
    duration: float = 0.0
    started: float | None = None  # time.perf_counter() when it started, if it did


class _DefRun:
    """`def` jobs handed to one pool thread, run there one after the other. The event
    loop may stop the run between two jobs and take back the ones not started."""

    __slots__ = ("jobs", "lock", "results", "started", "stopped")

    def __init__(self, jobs: list[tuple[Job, Task[..., Any], JobContext]]) -> None:
        self.jobs = jobs
        self.results: list[tuple[BaseException | None, float]] = []  # one per job run
        self.started = 0
        self.stopped = False
        self.lock = threading.Lock()

    def run(self) -> None:
        """In the thread: call each job's function, noting its error and run time."""
        for _, task, context in self.jobs:
            with self.lock:
                if self.stopped:
                    return
                self.started += 1
            if context.should_abort():  # asked while it waited for the thread
                self.results.append((JobAborted("aborted before it started"), 0.0))
                continue
            begun = context.run_started = time.perf_counter()
            error: BaseException | None = None
            try:
                task.func(*((context,) if task.pass_context else ()), **context.job.args)
            except BaseException as exc:  # even a task's sys.exit() only fails its job
                error = exc
            self.results.append((error, time.perf_counter() - begun))

    def stop(self) -> int:
        """Start no further job; returns how many were started."""
        with self.lock:
            self.stopped = True
            return self.started


def _array_literal(values: list[int] | list[float | None]) -> str:
    """A PostgreSQL array literal of numbers: on the hot path, one join is far cheaper
    than a driver adapting a list element by element."""
    return "{" + ",".join("NULL" if v is None else repr(v) for v in values) + "}"


def _since(outcome: Outcome, now: float) -> float | None:
    """Seconds since the job started (None if it never did), for its started_at."""
    return None if outcome.started is None else now - outcome.started


def _claim_order(job: Job) -> tuple[int, int]:
    return -job.priority, job.id


class Worker:
    """Runs jobs of an app; use `app.run_worker()` / `procq worker` rather than this."""

    def __init__(
        self,
        app: App,
        connector: AsyncConnector,
        *,
        queues: list[str] | None = None,
        concurrency: int = 1,
        wait: bool = True,
        listen_notify: bool = True,
        fetch_job_polling_interval: float = 5.0,
        abort_job_polling_interval: float = 5.0,
        shutdown_graceful_timeout: float | None = None,
        delete_jobs: DeleteJobs | str = "never",
        name: str | None = None,
        heartbeat_interval: float = 5.0,
        stalled_worker_timeout: float = 30.0,
        install_signal_handlers: bool = True,
        claim_ahead: bool = True,
    ) -> None:
        if concurrency < 1:
            raise InvalidOption(f"concurrency must be at least 1, not {concurrency}")
        if delete_jobs not in ("never", "successful", "always"):
            raise InvalidOption(
                f"delete_jobs must be 'never', 'successful' or 'always', not {delete_jobs!r}"
            )
        if stalled_worker_timeout <= heartbeat_interval:
            raise InvalidOption("stalled_worker_timeout must be longer than heartbeat_interval")
        self.app = app
        self.connector = connector
        self.queues = list(queues) if queues else None
        self.concurrency = concurrency
        self.wait = wait
        self.listen_notify = listen_notify
        self.polling_interval = fetch_job_polling_interval
        self.abort_polling_interval = abort_job_polling_interval
        self.shutdown_graceful_timeout = shutdown_graceful_timeout
        self.delete_jobs = delete_jobs
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.heartbeat_interval = heartbeat_interval
        self.stalled_worker_timeout = stalled_worker_timeout
        self.install_signal_handlers = install_signal_handlers
        self.claim_ahead = claim_ahead
        self.worker_id: int | None = None
        self._last_beat = time.monotonic()
        if not self.queues:
            claim = "claim_jobs_any_queue"
        else:
            claim = "claim_jobs_in_queue" if len(self.queues) == 1 else "claim_jobs_in_queues"
        self._claim_query = queries[claim]
        self._running: dict[int, tuple[asyncio.Task[None], JobContext]] = {}
        self._busy = 0  # slots running (a slot's thread may hold several claimed jobs)
        self._unmarked: set[int] = set()  # claimed ahead: no started_at in the table yet
        self._any_unmarked = asyncio.Event()  # the start marker sleeps until one is claimed
        self._ready: deque[Job] = deque()  # claimed ahead, waiting for a free slot
        self._avg_run: float | None = None  # moving average of a job's run time, s
        self._low_water = 0  # claim again when fewer jobs than this wait in _ready
        self._last_take = 0.0  # time.monotonic() when a slot last took a job from _ready
        self.give_back_after = GIVE_BACK_AFTER
        self._outcomes: list[Outcome] = []
        self._wake = asyncio.Event()
        self._claiming: asyncio.Task[None] | None = None
        self._flush_wanted = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._stopping = False
        self._hurry = asyncio.Event()
        self._shutdown_cancelled: set[int] = set()
        self._executor: ThreadPoolExecutor | None = None
        self.processed = 0

    # -- life cycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Register, run side tasks and the claim loop, then shut down cleanly."""
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="procq-job")
        await self._register()
        side = [
            asyncio.create_task(self._supervise("flusher", self._flush_loop)),
            asyncio.create_task(self._supervise("heartbeat", self._heartbeat_loop)),
            asyncio.create_task(self._supervise("abort poller", self._abort_poll_loop)),
            asyncio.create_task(self._supervise("start marker", self._mark_started_loop)),
        ]
        if self.listen_notify:
            side.append(asyncio.create_task(self._supervise("listener", self._listen)))
        schedules = app_schedules(self.app)
        if schedules:
            deferrer = PeriodicDeferrer(self.connector, schedules)
            side.append(asyncio.create_task(self._supervise("periodic deferrer", deferrer.run)))
        restore = self._install_signals()
        logger.info(
            "worker %s started (id %s, queues %s, concurrency %s)",
            self.name,
            self.worker_id,
            self.queues or "all",
            self.concurrency,
            extra={"worker": self.name, "worker_id": self.worker_id, "event": "worker_started"},
        )
        self._claiming = asyncio.create_task(self._claim_loop())
        try:
            await self._claiming
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are cancelled ourselves
            # else `_cancel_stuck_claim` ended a claim stuck in an outage: stop as usual
        finally:
            await self._shutdown(side)
            restore()

    def stop(self) -> None:
        """Stop claiming; running jobs finish (within shutdown_graceful_timeout)."""
        if self._stopping:
            logger.warning("second stop request: not waiting for running jobs any longer")
            self._hurry.set()
        elif self._claiming is not None and not self._claiming.done():
            self._claiming.get_loop().call_later(STUCK_CLAIM_AT_STOP, self._cancel_stuck_claim)
        self._stopping = True
        self._wake.set()

    def _cancel_stuck_claim(self) -> None:
        if self._claiming is not None and not self._claiming.done():
            logger.warning(
                "the claim in progress is still waiting %.0f s after the stop (is the "
                "database reachable?); cancelling it",
                STUCK_CLAIM_AT_STOP,
            )
            self._claiming.cancel()

    def _install_signals(self) -> Callable[[], None]:
        if not self.install_signal_handlers:
            return lambda: None
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
            except (RuntimeError, ValueError, NotImplementedError):
                pass  # not the main thread: the caller stops us with stop()

        def restore() -> None:
            for sig in installed:
                loop.remove_signal_handler(sig)

        return restore

    async def _register(self) -> None:
        while True:
            try:
                row = await self.connector.fetch_one_async(
                    queries["register_worker"],
                    {
                        "name": self.name,
                        "hostname": socket.gethostname(),
                        "pid": os.getpid(),
                        "queues": self.queues,
                        "concurrency": self.concurrency,
                    },
                )
                assert row is not None
                self.worker_id = int(row["id"])
                self._last_beat = time.monotonic()
                return
            except SchemaMissing:
                raise
            except ConnectorError as exc:
                if self._stopping:
                    raise
                logger.warning("cannot register the worker yet (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _shutdown(self, side: list[asyncio.Task[Any]]) -> None:
        self._stopping = True
        await self._give_back_at_stop()  # others may start them while we finish ours
        if self._running:
            await self._wait_for_running()
            await self._give_back_at_stop()  # what interrupted thread runs never started
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        await self._flush_all(give_up_after=OUTCOMES_AT_STOP_TIMEOUT)
        with contextlib.suppress(ConnectorError, TimeoutError):
            async with asyncio.timeout(UNREGISTER_AT_STOP_TIMEOUT):
                await self.connector.execute_async(
                    queries["unregister_worker"], {"worker_id": self.worker_id}
                )
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        logger.info(
            "worker %s stopped after %d job(s)",
            self.name,
            self.processed,
            extra={"worker": self.name, "event": "worker_stopped"},
        )

    async def _give_back_at_stop(self) -> None:
        """`_release_ready` at stop, bounded: in an outage the rescue does it later."""
        if not self._ready:
            return
        try:
            await asyncio.wait_for(self._release_ready(), RELEASE_AT_STOP_TIMEOUT)
        except TimeoutError:
            logger.warning(
                "could not give back the jobs claimed ahead in time; they will be rescued "
                "once this worker's heartbeat expires"
            )

    async def _wait_for_running(self) -> None:
        """Let running jobs finish for shutdown_graceful_timeout (or until a second stop
        request), then cancel the rest: they go back to 'todo' for another worker."""
        logger.info("waiting for %d running job(s) to finish", len(self._running))
        tasks = [t for t, _ in self._running.values()]
        hurry = asyncio.create_task(self._hurry.wait())
        deadline = self.shutdown_graceful_timeout
        end = None if deadline is None else time.monotonic() + deadline
        pending = set(tasks)
        while pending and not self._hurry.is_set():
            left = None if end is None else max(end - time.monotonic(), 0.0)
            done, _ = await asyncio.wait(
                [*pending, hurry], timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            pending -= done
            if left == 0.0 or not done:
                break
        hurry.cancel()
        for job_id, (task, context) in list(self._running.items()):
            if task in pending:
                logger.warning(
                    "job %s still running at shutdown: cancelling it and putting it back",
                    job_id,
                    extra=self._job_extra(context.job, "job_interrupted"),
                )
                self._shutdown_cancelled.add(job_id)
                context.request_abort()  # a sync task sees should_abort() turn true
                task.cancel(msg="shutdown")
        if pending:
            await asyncio.wait(pending)

    async def _supervise(self, what: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Keep a side task alive for the whole life of the worker: restart it (with
        backoff) whether it fails or returns."""
        backoff = 0.5
        while True:
            started = time.monotonic()
            try:
                await loop()
                problem = "stopped"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                problem = f"failed ({exc})"
            if time.monotonic() - started > 30:
                backoff = 0.5
            logger.warning("%s %s; restarting in %.1f s", what, problem, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    # -- claiming ------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = 0.5
        while not self._stopping:
            self._wake.clear()  # before sleeping: a set event would never yield (busy loop)
            want = self._claim_size()
            if want <= 0:
                await self._sleep(self.give_back_after if self._ready else None)
                if self._ready and time.monotonic() - self._last_take > self.give_back_after:
                    await self._release_ready()
                continue
            try:
                jobs = await self._claim(want, self.concurrency - self._busy - len(self._ready))
                backoff = 0.5
            except SchemaMissing:
                raise
            except ConnectorError as exc:
                logger.warning("cannot fetch jobs (%s); retrying in %.1f s", exc, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            self._ready.extend(jobs)
            self._last_take = time.monotonic()
            self._fill_slots()
            if len(jobs) == want:
                continue
            if not self.wait and not jobs and await self._drained():
                return
            await self._sleep(self.polling_interval)

    def _claim_size(self) -> int:
        """How many jobs to claim now: 0 while the free slots are covered and the jobs
        claimed ahead are more than half of what we mean to hold."""
        free = self.concurrency - self._busy
        ahead = self._ahead()
        self._low_water = ahead // 2
        if len(self._ready) >= free and len(self._ready) > self._low_water:
            return 0
        return free + ahead - len(self._ready)

    def _ahead(self) -> int:
        """Jobs to claim beyond the free slots: about CLAIM_AHEAD_HORIZON seconds of work
        at the pace seen so far (a job running long right now counts as the pace)."""
        if self._avg_run is None or not self.claim_ahead:
            return 0
        now = time.perf_counter()
        running = (now - c.run_started for _, c in self._running.values() if c.run_started)
        pace = max(self._avg_run, max(running, default=0.0))
        if pace <= 0:
            return MAX_CLAIM_AHEAD
        return min(MAX_CLAIM_AHEAD, int(self.concurrency * CLAIM_AHEAD_HORIZON / pace))

    async def _claim(self, limit: int, start: int) -> list[Job]:
        """Claim up to `limit` jobs, of which `start` will start at once (the rest are
        claimed ahead)."""
        start = max(start, 0)
        params = {
            "limit": limit,
            "start": start,
            "worker_id": self.worker_id,
            "queues": self.queues,
            "queue": self.queues[0] if self.queues else None,
        }
        for _ in range(10):
            try:
                rows = await self.connector.fetch_all_async(self._claim_query, params)
                jobs = [Job.from_row(row) for row in rows]
                jobs.sort(key=_claim_order)  # RETURNING keeps no order
                if len(jobs) > start:
                    self._unmarked.update(job.id for job in jobs[start:])
                    self._any_unmarked.set()
                return jobs
            except LockRace:
                logger.debug("lock race while claiming; claiming again")
        return []

    async def _drained(self) -> bool:
        """For wait=False: nothing runs, every outcome is written, and nothing is left."""
        if self._running or self._ready:
            return False
        await self._flush_all()
        return not self._running and not await self._claim_peek()

    async def _claim_peek(self) -> bool:
        jobs = await self._claim(self.concurrency, self.concurrency - self._busy)
        self._ready.extend(jobs)
        self._fill_slots()
        return bool(jobs)

    async def _sleep(self, timeout: float | None) -> None:
        """Until woken (a NOTIFY, a free slot, a stop) or `timeout` s. asyncio.timeout,
        not wait_for: no task of its own, so a wake-up reaches the claim in fewer turns
        of the event loop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    # -- running -------------------------------------------------------------------------

    def _fill_slots(self) -> None:
        """Start a slot for each claimed job that has a free slot to run in."""
        while self._ready and self._busy < self.concurrency:
            taken = self._take()
            if taken is None:
                return
            job, task = taken
            context = self._context(job, task)
            runner = asyncio.create_task(self._slot(job, task, context))
            self._running[job.id] = (runner, context)
            self._busy += 1

    async def _slot(self, job: Job, task: Task[..., Any], context: JobContext) -> None:
        """Run a job, then the next claimed one while there is one: a slot is one asyncio
        task for a whole run of jobs, not one task per job."""
        runner = asyncio.current_task()
        assert runner is not None
        try:
            while True:
                if task.is_async:
                    await self._run_job(job, task, context)
                else:
                    await self._run_in_thread([(job, task, context), *self._take_def_run()])
                if runner.cancelling():
                    break  # cancelled from outside: the slot ends with its job
                taken = self._take()
                if taken is None:
                    break
                job, task = taken
                context = self._context(job, task)
                self._running[job.id] = (runner, context)
        finally:
            self._busy -= 1
            self._wake.set()  # a slot is free: time to claim

    def _take_def_run(self) -> list[tuple[Job, Task[..., Any], JobContext]]:
        """More claimed `def` jobs for the same thread: this slot's share of the claimed
        jobs, the ones at the head of the line only (order is kept)."""
        share = min(MAX_THREAD_RUN - 1, len(self._ready) // self.concurrency)
        runner = asyncio.current_task()
        assert runner is not None
        taken: list[tuple[Job, Task[..., Any], JobContext]] = []
        while len(taken) < share and self._ready:
            task = self.app.tasks.get(self._ready[0].task_name)
            if task is None or task.is_async:
                break
            job = self._ready.popleft()
            context = self._context(job, task)
            self._running[job.id] = (runner, context)
            taken.append((job, task, context))
        if taken:
            self._took()
        return taken

    def _took(self) -> None:
        """Jobs left the line: note when (for the give-back), and claim again when the
        line runs low."""
        self._last_take = time.monotonic()
        if len(self._ready) <= self._low_water:
            self._wake.set()

    def _take(self) -> tuple[Job, Task[..., Any]] | None:
        """The next claimed job and its task; a job of an unknown task fails at once."""
        while self._ready:
            job = self._ready.popleft()
            self._took()
            task = self.app.tasks.get(job.task_name)
            if task is not None:
                return job, task
            error = (
                f"unknown task {job.task_name!r}: no task of that name is registered on the "
                "worker's app (check --app and the task's name)"
            )
            logger.error(error, extra=self._job_extra(job, "job_failed"))
            self._record(Outcome(job, "failed", error))
        return None

    def _context(self, job: Job, task: Task[..., Any]) -> JobContext:
        return JobContext(
            job=job, app=self.app, task=task, worker_name=self.name, worker_id=self.worker_id
        )

    async def _release_ready(self) -> None:
        """Give the jobs claimed ahead back to the queue, for any worker to start."""
        jobs = list(self._ready)
        self._ready.clear()
        if not jobs:
            return
        self._unmarked.difference_update(job.id for job in jobs)
        try:
            await self.connector.fetch_all_async(
                queries["release_jobs"],
                {"ids": [job.id for job in jobs], "worker_id": self.worker_id},
            )
        except ConnectorError as exc:
            if self._stopping:
                logger.warning(
                    "cannot give back %d job(s) claimed ahead (%s); they will be rescued "
                    "once this worker's heartbeat expires",
                    len(jobs),
                    exc,
                )
                return
            self._ready.extendleft(reversed(jobs))  # still ours: run them here
            self._last_take = time.monotonic()
            return
        logger.debug("gave back %d job(s) claimed ahead", len(jobs))

    async def _run_job(self, job: Job, task: Task[..., Any], context: JobContext) -> None:
        """Run one `async def` job in the slot's own asyncio task."""
        if logger.isEnabledFor(logging.DEBUG):  # the extra dict costs a few µs per job
            logger.debug("job %s started", job.id, extra=self._job_extra(job, "job_started"))
        started = context.run_started = time.perf_counter()
        try:
            await self._call(task, job, context)
            outcome = Outcome(job, "succeeded")
        except asyncio.CancelledError as exc:
            outcome = self._cancelled_outcome(job, context, exc)
            runner = asyncio.current_task()
            if outcome.status != "failed" and runner is not None and runner.cancelling():
                runner.uncancel()  # our abort or shutdown cancel: meant for the job only
        except Exception as exc:
            outcome = self._outcome(job, task, context, exc)
        self._done(outcome, time.perf_counter() - started)

    async def _call(self, task: Task[..., Any], job: Job, context: JobContext) -> None:
        coro = task.func(*((context,) if task.pass_context else ()), **job.args)
        if task.timeout is None:
            await coro
            return
        try:
            async with asyncio.timeout(task.timeout):
                await coro
        except TimeoutError as exc:
            raise TaskTimeout(f"timed out after {task.timeout:g} s") from exc

    async def _run_in_thread(self, jobs: list[tuple[Job, Task[..., Any], JobContext]]) -> None:
        """Run `def` jobs one after the other in a thread of the pool, so the event loop
        is never blocked; their outcomes are recorded when the run comes back."""
        run = _DefRun(jobs)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, run.run)
        timer = None
        if len(jobs) > 1:
            timer = loop.call_later(self.give_back_after, self._hand_back_unstarted, run)
        try:
            await future
        except asyncio.CancelledError as exc:
            started = run.stop()
            for index, (job, task, context) in enumerate(jobs[:started]):
                if index < len(run.results):
                    self._done(self._outcome(job, task, context, run.results[index][0]), 0.0)
                elif job.id in self._running:  # still running in the thread: as for async jobs
                    self._done(self._cancelled_outcome(job, context, exc), 0.0)
            self._take_back(jobs[started:])  # never started: given back like jobs claimed ahead
            return
        finally:
            if timer is not None:
                timer.cancel()
        for (job, task, context), (error, duration) in zip(jobs, run.results, strict=False):
            if error is None and task.timeout is not None and duration > task.timeout:
                error = TaskTimeout(
                    f"timed out: ran {duration:.1f} s, longer than its {task.timeout:g} s timeout"
                )
            self._done(self._outcome(job, task, context, error), duration)

    def _hand_back_unstarted(self, run: _DefRun) -> None:
        """A run of `def` jobs still busy after give_back_after: the jobs it has not
        started go back to the head of the line, for a free slot here or (after
        give_back_after again) for another worker."""
        self._take_back(run.jobs[run.stop() :])
        self._fill_slots()
        self._wake.set()

    def _take_back(self, jobs: list[tuple[Job, Task[..., Any], JobContext]]) -> None:
        """Jobs of a thread run that never started go back to the head of the line (an
        abort asked meanwhile, not the shutdown's own, ends them instead); ones already
        taken back are skipped."""
        for job, _, _ in reversed(jobs):
            running = self._running.pop(job.id, None)
            if running is None:
                continue
            if job.id not in self._shutdown_cancelled and running[1].should_abort():
                self._record(Outcome(job, "aborted", NEVER_STARTED_ABORT))
            else:
                self._ready.appendleft(job)

    def _outcome(
        self, job: Job, task: Task[..., Any], context: JobContext, exc: BaseException | None
    ) -> Outcome:
        if exc is None:
            return Outcome(job, "succeeded")
        if job.id not in self._shutdown_cancelled and (
            isinstance(exc, JobAborted) or context.should_abort()
        ):
            return Outcome(job, "aborted", f"aborted on request: {exc!r}")
        return self._failure_outcome(task, job, exc)

    def _done(self, outcome: Outcome, duration: float) -> None:
        outcome.duration = duration
        avg = self._avg_run
        self._avg_run = duration if avg is None else avg + (duration - avg) * 0.2
        self._unmarked.discard(outcome.job.id)
        running = self._running.pop(outcome.job.id, None)
        if running is not None and running[1].run_started:
            outcome.started = running[1].run_started
        self._record(outcome)
        self._log_outcome(outcome)

    def _cancelled_outcome(
        self, job: Job, context: JobContext, exc: asyncio.CancelledError
    ) -> Outcome:
        if job.id in self._shutdown_cancelled:
            self._shutdown_cancelled.discard(job.id)
            return Outcome(job, "todo", "the worker shut down before the job finished")
        if context.should_abort():
            return Outcome(job, "aborted", "aborted on request")
        return Outcome(job, "failed", f"the job was cancelled: {exc!r}")

    def _failure_outcome(self, task: Task[..., Any], job: Job, exc: BaseException) -> Outcome:
        error = "".join(traceback.format_exception(exc))[-MAX_ERROR_LENGTH:]
        strategy = task.retry_strategy
        delay = strategy.retry_delay(job.attempts, exc) if strategy else None
        if delay is None:
            return Outcome(job, "failed", error)
        return Outcome(job, "todo", error, delay=delay)

    def _log_outcome(self, outcome: Outcome) -> None:
        job = outcome.job
        if outcome.status == "succeeded" and not logger.isEnabledFor(logging.INFO):
            return  # the hot path at WARNING level: build nothing
        extra = self._job_extra(
            job, f"job_{'retried' if outcome.status == 'todo' else outcome.status}"
        )
        extra["duration"] = round(outcome.duration, 6)
        if outcome.status == "succeeded":
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "job %s %s succeeded in %.3f s",
                    job.id,
                    job.task_name,
                    outcome.duration,
                    extra=extra,
                )
            return
        first_line = (outcome.error or "").strip().splitlines()[-1:] or [""]
        extra["error"] = first_line[0]
        if outcome.status == "todo":
            logger.warning(
                "job %s %s failed (attempt %d), retrying in %.1f s: %s",
                job.id,
                job.task_name,
                job.attempts,
                outcome.delay,
                first_line[0],
                extra=extra,
            )
        else:  # an abort was asked for: not an error
            logger.log(
                logging.WARNING if outcome.status == "aborted" else logging.ERROR,
                "job %s %s %s: %s",
                job.id,
                job.task_name,
                outcome.status,
                first_line[0],
                extra=extra,
            )

    def _job_extra(self, job: Job, event: str) -> dict[str, Any]:
        return {
            "event": event,
            "job_id": job.id,
            "task": job.task_name,
            "queue": job.queue,
            "attempt": job.attempts,
            "worker": self.name,
        }

    # -- recording outcomes --------------------------------------------------------------

    def _record(self, outcome: Outcome) -> None:
        self.processed += 1
        self._outcomes.append(outcome)
        self._flush_wanted.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            await self._flush_all()

    async def _flush_all(self, give_up_after: float | None = None) -> None:
        """Write every queued outcome; on a database error keep them and try again
        (at shutdown only for `give_up_after` seconds: the rescue picks up the rest)."""
        async with self._flush_lock:
            await self._flush_queued(give_up_after)

    async def _flush_queued(self, give_up_after: float | None) -> None:
        backoff = 0.2
        deadline = None if give_up_after is None else time.monotonic() + give_up_after
        while self._outcomes:
            if deadline is not None and time.monotonic() > deadline:
                logger.error(
                    "giving up on recording %d outcome(s); those jobs will be "
                    "rescued once this worker's heartbeat expires",
                    len(self._outcomes),
                )
                return
            batch, self._outcomes = self._outcomes, []
            try:
                # a write cut short at the deadline is written again: finish_jobs only
                # touches jobs this worker still holds
                left = None if deadline is None else max(deadline - time.monotonic(), 0.1)
                async with asyncio.timeout(left):
                    await self._write(batch)
                backoff = 0.2
                if any(o.job.lock is not None for o in batch):
                    self._wake.set()  # a lock was released: its next job may be ours to run
            except (ConnectorError, TimeoutError) as exc:
                self._outcomes[:0] = batch
                logger.warning(
                    "cannot record %d outcome(s) (%s); retrying in %.1f s",
                    len(batch),
                    str(exc) or "timed out",
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            except BaseException:
                self._outcomes[:0] = batch  # cancelled or a bug: never drop an outcome
                raise

    async def _write(self, batch: list[Outcome]) -> None:
        deleted = [o for o in batch if self._deletes(o)]
        kept = [o for o in batch if not self._deletes(o)]
        if deleted:
            await self.connector.execute_async(
                queries["delete_finished_jobs"],
                {"ids": [o.job.id for o in deleted], "worker_id": self.worker_id},
            )
        if not kept:
            return
        for _ in range(3):
            try:
                await self._finish(kept)
                return
            except AlreadyEnqueued:
                # a job with the queueing lock of a retry was deferred while we wrote:
                # the next statement sees it and fails the retry instead
                logger.debug("queueing-lock race while recording outcomes; writing again")
        await self._finish([self._not_retried(o) for o in kept])

    @staticmethod
    def _not_retried(outcome: Outcome) -> Outcome:
        if outcome.status != "todo":
            return outcome
        note = "\nnot retried: another job with the same queueing lock is already waiting"
        return dataclasses.replace(outcome, status="failed", error=(outcome.error or "") + note)

    async def _finish(self, batch: list[Outcome]) -> None:
        now = time.perf_counter()
        plain = [o for o in batch if o.status == "succeeded" and o.job.lock is None]
        if plain:
            await self.connector.execute_async(
                queries["finish_succeeded_jobs"],
                {
                    "ids": _array_literal([o.job.id for o in plain]),
                    "since": _array_literal([_since(o, now) for o in plain]),
                    "worker_id": self.worker_id,
                },
            )
            if len(plain) == len(batch):
                return
            batch = [o for o in batch if o.status != "succeeded" or o.job.lock is not None]
        await self.connector.fetch_all_async(
            queries["finish_jobs"],
            {
                "ids": [o.job.id for o in batch],
                "statuses": [o.status for o in batch],
                "errors": [o.error for o in batch],
                "delays": [o.delay for o in batch],
                "since": [_since(o, now) for o in batch],
                "worker_id": self.worker_id,
            },
        )

    def _deletes(self, outcome: Outcome) -> bool:
        if self.delete_jobs == "always":
            return outcome.status != "todo"
        return self.delete_jobs == "successful" and outcome.status == "succeeded"

    # -- side tasks ----------------------------------------------------------------------

    async def _listen(self) -> None:
        await self.connector.listen([JOBS_CHANNEL, ABORT_CHANNEL], self._on_notify, self._wake.set)

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == JOBS_CHANNEL:
            if self.queues is None or payload in self.queues:
                self._wake.set()
        elif channel == ABORT_CHANNEL:
            with contextlib.suppress(ValueError):
                self._abort(int(payload))

    def _abort(self, job_id: int) -> None:
        running = self._running.get(job_id)
        if running is None:
            self._abort_ready(job_id)
            return
        task, context = running
        if context.should_abort():
            return
        context.request_abort()
        logger.warning(
            "aborting job %s on request", job_id, extra=self._job_extra(context.job, "job_aborting")
        )
        if context.task is not None and context.task.is_async:
            task.cancel(msg="abort")

    def _abort_ready(self, job_id: int) -> None:
        """An abort of a job claimed ahead: it never starts."""
        for job in self._ready:
            if job.id == job_id:
                self._ready.remove(job)
                logger.warning(
                    "aborting job %s on request before it started",
                    job_id,
                    extra=self._job_extra(job, "job_aborting"),
                )
                self._record(Outcome(job, "aborted", NEVER_STARTED_ABORT))
                return

    async def _mark_started_loop(self) -> None:
        """Give a started_at to the jobs claimed ahead that have run for a while (asleep
        while there are none)."""
        while True:
            if not self._unmarked:
                self._any_unmarked.clear()
                await self._any_unmarked.wait()
            await asyncio.sleep(MARK_STARTED_AFTER)
            if not self._unmarked:
                continue
            now = time.perf_counter()
            marks: dict[int, float] = {}
            for job_id in self._unmarked:
                running = self._running.get(job_id)
                if running is not None and running[1].run_started:
                    since = now - running[1].run_started
                    if since >= MARK_STARTED_AFTER:
                        marks[job_id] = since
            if marks:
                await self.connector.execute_async(
                    queries["mark_started"],
                    {
                        "ids": list(marks),
                        "since": list(marks.values()),
                        "worker_id": self.worker_id,
                    },
                )
                self._unmarked.difference_update(marks)

    async def _abort_poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.abort_polling_interval)
            if not self._running:
                continue
            rows = await self.connector.fetch_all_async(
                queries["list_abort_requests"], {"worker_id": self.worker_id}
            )
            for row in rows:
                self._abort(int(row["id"]))

    async def _heartbeat_loop(self) -> None:
        """Beat every heartbeat_interval, through outages too (no growing backoff: a live
        worker must not look dead), and rescue dead workers' jobs after each beat."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                row = await self.connector.fetch_one_async(
                    queries["heartbeat"], {"worker_id": self.worker_id}
                )
            except ConnectorError as exc:
                logger.warning("cannot send the heartbeat (%s); trying again", exc)
                continue
            now = time.monotonic()
            cut_off = now - self._last_beat > self.stalled_worker_timeout
            self._last_beat = now
            if row is None:
                logger.warning(
                    "this worker was declared dead (no heartbeat in time); registering "
                    "again, and dropping %d job(s) claimed ahead (rescued for others)",
                    len(self._ready),
                )
                self._ready.clear()
                self._unmarked.clear()
                await self._register()
            if cut_off:  # back from an outage: the others deserve time to beat first
                continue
            await self.rescue_stalled_jobs()

    async def rescue_stalled_jobs(self) -> int:
        """Forget dead workers and put their running jobs back (or fail them when out of
        retries). Any live worker does this; returns how many jobs were rescued."""
        return await rescue_stalled_jobs(
            self.app, self.connector, self.stalled_worker_timeout, self.name
        )
