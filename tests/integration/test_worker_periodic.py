"""Periodic tasks: each tick deferred exactly once across workers, catch-up bounded by
max_delay, the tick's timestamp given to the task, cron validated at decoration."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time

import pytest

from procq_sqla import App
from procq_sqla.exceptions import InvalidOption
from procq_sqla.periodic import PeriodicDeferrer, app_schedules
from procq_sqla.testing import running_worker


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


async def test_concurrent_deferrers_defer_each_tick_once(async_app: App, db) -> None:
    @async_app.periodic(cron="*/5 * * * *", periodic_id="five")
    @async_app.task(name="report")
    async def report(timestamp: int) -> None: ...

    (schedule,) = app_schedules(async_app)
    ticks = schedule.ticks(at("2026-01-01T00:00:00") - 1, at("2026-01-01T00:20:00"))
    assert len(ticks) == 5
    deferrers = [PeriodicDeferrer(async_app.async_connector(), [schedule]) for _ in range(3)]
    results = await asyncio.gather(*(d.defer([(schedule, t) for t in ticks]) for d in deferrers))

    assert sum(len(rows) for rows in results) == 5
    jobs = db.execute("SELECT id, task_name, args FROM procq_jobs ORDER BY id").fetchall()
    assert sorted(j["args"]["timestamp"] for j in jobs) == ticks
    assert {j["task_name"] for j in jobs} == {"report"}
    claimed = db.execute(
        "SELECT periodic_id, defer_timestamp, job_id FROM procq_periodic_defers"
    ).fetchall()
    assert sorted((c["defer_timestamp"], c["job_id"]) for c in claimed) == sorted(
        (j["args"]["timestamp"], j["id"]) for j in jobs
    )
    assert {c["periodic_id"] for c in claimed} == {"five"}


async def test_catch_up_defers_only_ticks_younger_than_max_delay(async_app: App, db) -> None:
    @async_app.periodic(cron="*/5 * * * *", periodic_id="long", max_delay=600)
    @async_app.periodic(cron="*/5 * * * *", periodic_id="short", max_delay=100)
    @async_app.task(name="report")
    async def report(timestamp: int) -> None: ...

    now = at("2026-01-01T12:07:30")
    deferrer = PeriodicDeferrer(async_app.async_connector(), app_schedules(async_app), lambda: now)
    task = asyncio.create_task(deferrer.run())
    await asyncio.sleep(0.5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    rows = db.execute(
        "SELECT periodic_id, defer_timestamp FROM procq_periodic_defers ORDER BY 2"
    ).fetchall()
    # 12:00 and 12:05 are younger than 600 s; 12:05 is 150 s old, older than 100 s
    assert [(r["periodic_id"], r["defer_timestamp"]) for r in rows] == [
        ("long", int(at("2026-01-01T12:00:00"))),
        ("long", int(at("2026-01-01T12:05:00"))),
    ]


async def test_three_workers_defer_each_seconds_tick_once_with_its_timestamp(
    async_app: App, db
) -> None:
    received: list[int] = []

    @async_app.periodic(cron="* * * * * *", periodic_id="every-second", max_delay=0)
    @async_app.task(name="tick")
    async def tick(timestamp: int) -> None:
        received.append(timestamp)

    async with (
        running_worker(async_app),
        running_worker(async_app),
        running_worker(async_app),
    ):
        await asyncio.sleep(3.3)
    jobs = db.execute(
        "SELECT (args->>'timestamp')::bigint AS ts, status FROM procq_jobs ORDER BY 1"
    ).fetchall()
    stamps = [j["ts"] for j in jobs]
    assert len(stamps) >= 3
    assert stamps == list(range(stamps[0], stamps[0] + len(stamps))), "a tick missing or doubled"
    assert sorted(received) == [j["ts"] for j in jobs if j["status"] == "succeeded"]
    assert len(received) >= len(stamps) - 1


async def test_a_tick_whose_queueing_lock_is_taken_is_recorded_but_skipped(
    async_app: App, db
) -> None:
    @async_app.periodic(cron="* * * * *")
    @async_app.task(name="sync", queueing_lock="sync")
    async def sync(timestamp: int) -> None: ...

    await sync.defer_async(timestamp=0)
    (schedule,) = app_schedules(async_app)
    deferrer = PeriodicDeferrer(async_app.async_connector(), [schedule])
    rows = await deferrer.defer([(schedule, 60)])

    assert rows == []
    assert db.execute("SELECT count(*) AS n FROM procq_jobs").fetchone()["n"] == 1
    assert db.execute("SELECT count(*) AS n FROM procq_periodic_defers").fetchone()["n"] == 1


def test_periodic_validates_cron_and_placement(sync_app: App) -> None:
    with pytest.raises(InvalidOption, match="not a valid cron expression"):
        sync_app.periodic(cron="every five minutes")
    with pytest.raises(InvalidOption, match=r"goes above @app\.task"):

        @sync_app.periodic(cron="* * * * *")
        def plain() -> None: ...

    @sync_app.periodic(cron="* * * * * */10", periodic_id="a")
    @sync_app.task(name="t")
    def t(timestamp: int) -> None: ...

    with pytest.raises(InvalidOption, match="already has a schedule with periodic_id 'a'"):
        sync_app.periodic(cron="* * * * *", periodic_id="a")(t)
    (schedule,) = app_schedules(sync_app)
    assert schedule.ticks(at("2026-01-01T00:00:00"), at("2026-01-01T00:00:30")) == [
        int(at("2026-01-01T00:00:10")),
        int(at("2026-01-01T00:00:20")),
        int(at("2026-01-01T00:00:30")),
    ]


async def test_deferrer_forgets_ticks_no_worker_would_defer_again(async_app: App, db) -> None:
    @async_app.periodic(cron="0 0 1 1 *", max_delay=60)
    @async_app.task(name="yearly")
    async def yearly(timestamp: int) -> None: ...

    now = int(time.time())
    for stamp in (now - 10 * 86400, now - 600):
        db.execute(
            "INSERT INTO procq_periodic_defers (task_name, defer_timestamp) VALUES ('yearly', %s)",
            (stamp,),
        )
    task = asyncio.create_task(
        PeriodicDeferrer(async_app.async_connector(), app_schedules(async_app)).run()
    )
    await asyncio.sleep(0.3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    left = db.execute("SELECT defer_timestamp FROM procq_periodic_defers").fetchall()
    assert [r["defer_timestamp"] for r in left] == [now - 600]  # kept: within max_delay + 1 h
