"""Cancel, abort and retry through the job manager, and task timeouts."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from polling import wait_for_status

from procq_sqla import App, JobContext
from procq_sqla.exceptions import JobAborted
from procq_sqla.testing import running_worker


@pytest.mark.parametrize(
    ("listen_notify", "limit"), [(True, 1.0), (False, 0.3 + 0.5)], ids=["notify", "polling"]
)
async def test_abort_cancels_a_running_async_task(
    async_app: App, db, listen_notify: bool, limit: float
) -> None:
    cancelled = asyncio.Event()

    @async_app.task(name="long")
    async def long() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with running_worker(
        async_app, listen_notify=listen_notify, abort_job_polling_interval=0.3
    ):
        job_id = await long.defer_async()
        assert await wait_for_status(db, job_id, "doing") == "doing"
        started = time.monotonic()
        assert await async_app.job_manager.abort_async(job_id) is True
        assert await wait_for_status(db, job_id, "aborted") == "aborted"
        elapsed = time.monotonic() - started
    assert cancelled.is_set()
    assert elapsed < limit, f"aborted after {elapsed:.2f} s"
    row = db.execute("SELECT * FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row["finished_at"] is not None
    assert row["last_error"] == "aborted on request"


async def test_sync_task_sees_should_abort_and_stops(async_app: App, db) -> None:
    seen = threading.Event()

    @async_app.task(name="grind", pass_context=True)
    def grind(context: JobContext) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if context.should_abort():
                seen.set()
                raise JobAborted("stopping as asked")
            time.sleep(0.01)

    async with running_worker(async_app):
        job_id = await grind.defer_async()
        assert await wait_for_status(db, job_id, "doing") == "doing"
        started = time.monotonic()
        await asyncio.to_thread(async_app.job_manager.abort, job_id)
        assert await wait_for_status(db, job_id, "aborted") == "aborted"
        assert time.monotonic() - started < 1.0
    assert seen.is_set()
    row = db.execute("SELECT last_error FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert "stopping as asked" in row["last_error"]


async def test_cancel_a_waiting_job_and_retry_a_failed_one(async_app: App, db) -> None:
    runs: list[int] = []

    @async_app.task(name="t")
    async def t(n: int) -> None:
        runs.append(n)
        if len(runs) == 1:
            raise ValueError("first run fails")

    manager = async_app.job_manager
    cancelled = await t.defer_async(n=0)
    assert await manager.cancel_async(cancelled) is True
    failing = await t.defer_async(n=1)
    async with running_worker(async_app):
        assert await wait_for_status(db, failing, "failed") == "failed"
        assert await manager.cancel_async(failing) is False  # finished: nothing to cancel
        assert await manager.retry_async(failing) is True
        assert await wait_for_status(db, failing, "succeeded") == "succeeded"
    assert runs == [1, 1]
    assert await wait_for_status(db, cancelled, "cancelled") == "cancelled"
    assert (
        db.execute("SELECT attempts FROM procq_jobs WHERE id = %s", (failing,)).fetchone()[
            "attempts"
        ]
        == 2
    )


async def test_async_task_past_its_timeout_is_cancelled_and_retried(async_app: App, db) -> None:
    @async_app.task(name="slow", timeout=0.2, retry=1)
    async def slow() -> None:
        await asyncio.sleep(10)

    async with running_worker(async_app):
        job_id = await slow.defer_async()
        assert await wait_for_status(db, job_id, "failed") == "failed"
    row = db.execute("SELECT * FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row["attempts"] == 2
    assert "TaskTimeout: timed out after 0.2 s" in row["last_error"]
    assert (row["finished_at"] - row["started_at"]).total_seconds() < 2


async def test_sync_task_past_its_timeout_is_recorded_as_timed_out(async_app: App, db) -> None:
    @async_app.task(name="slow_sync", timeout=0.1)
    def slow_sync() -> None:
        time.sleep(0.3)

    async with running_worker(async_app):
        job_id = await slow_sync.defer_async()
        assert await wait_for_status(db, job_id, "failed") == "failed"
    row = db.execute("SELECT last_error FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert "timed out: ran 0.3 s, longer than its 0.1 s timeout" in row["last_error"]
