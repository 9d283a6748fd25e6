"""Priorities and schedules: higher priority first, FIFO within a priority, and a
scheduled job starts within the polling interval of its time even without NOTIFY."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from polling import wait_until

from procq_sqla import App
from procq_sqla.exceptions import InvalidOption
from procq_sqla.testing import running_worker


async def test_higher_priority_first_then_fifo_within_a_priority(async_app: App, db) -> None:
    ran: list[str] = []

    @async_app.task(name="t")
    async def t(label: str) -> None:
        ran.append(label)

    for label, priority in [("a0", 0), ("b5", 5), ("c0", 0), ("d10", 10), ("e5", 5), ("f-3", -3)]:
        await t.configure(priority=priority).defer_async(label=label)

    async with running_worker(async_app, concurrency=1):
        await wait_until(db, "SELECT count(*) FROM procq_jobs WHERE status = 'succeeded'", 6)
    assert ran == ["d10", "b5", "e5", "a0", "c0", "f-3"]


@pytest.mark.parametrize("listen_notify", [False, True])
async def test_scheduled_job_starts_within_the_polling_interval(
    async_app: App, db, listen_notify: bool
) -> None:
    @async_app.task(name="t")
    async def t() -> None: ...

    polling = 0.5
    async with running_worker(
        async_app, listen_notify=listen_notify, fetch_job_polling_interval=polling
    ):
        await asyncio.sleep(0.2)  # the worker is idle and asleep when the time comes
        job_id = await t.configure(schedule_in={"seconds": 1}).defer_async()
        await asyncio.sleep(0.5)
        assert db.execute("SELECT status FROM procq_jobs").fetchone()["status"] == "todo"
        await wait_until(db, "SELECT status FROM procq_jobs", "succeeded", timeout=5)
    row = db.execute(
        "SELECT scheduled_at, started_at FROM procq_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert row["started_at"] >= row["scheduled_at"]
    late = (row["started_at"] - row["scheduled_at"]).total_seconds()
    assert late < polling + 0.3, f"started {late:.2f} s after its time"


async def test_schedule_at_is_timezone_aware_and_respected(async_app: App, db) -> None:
    @async_app.task(name="t")
    async def t() -> None: ...

    with pytest.raises(InvalidOption, match="timezone-aware"):
        t.configure(schedule_at=dt.datetime.now() + dt.timedelta(seconds=1))
    soon = dt.datetime.now(dt.timezone(dt.timedelta(hours=5))) + dt.timedelta(seconds=0.6)
    job_id = await t.configure(schedule_at=soon).defer_async()
    async with running_worker(async_app):
        await wait_until(db, "SELECT status FROM procq_jobs", "succeeded", timeout=5)
    started = db.execute("SELECT started_at FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert started["started_at"] >= soon
