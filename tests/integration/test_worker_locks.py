"""Locks: one job of a lock at a time, in priority then age order, and a job of the lock
that is not runnable (scheduled later, or in a queue nobody reads) never blocks the rest."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import time
from typing import Any

import pytest
from polling import wait_until

from procq_sqla import App
from procq_sqla.connectors.base import LockRace
from procq_sqla.sql import queries
from procq_sqla.testing import running_worker
from procq_sqla.worker import Worker


async def test_lock_runs_one_job_at_a_time_in_priority_then_age_order(async_app: App, db) -> None:
    runs: list[tuple[int, float, float]] = []

    @async_app.task(name="step", pass_context=True)
    async def step(context: Any, n: int) -> None:
        started = time.monotonic()
        await asyncio.sleep(0.02)
        runs.append((n, started, time.monotonic()))

    for n in range(6):
        await step.configure(lock="L").defer_async(n=n)
    await step.configure(lock="L", priority=5).defer_async(n=100)

    async with running_worker(async_app, concurrency=4), running_worker(async_app, concurrency=4):
        done = await wait_until(
            db, "SELECT count(*) AS n FROM procq_jobs WHERE status = 'succeeded'", 7
        )
    assert done == 7
    assert [n for n, _, _ in runs] == [100, 0, 1, 2, 3, 4, 5]
    for (_, _, end), (_, start, _) in itertools.pairwise(runs):
        assert start >= end, "two jobs of one lock overlapped"


async def test_future_head_job_and_unread_queue_do_not_block_the_lock(async_app: App, db) -> None:
    ran: list[int] = []

    @async_app.task(name="step")
    async def step(n: int) -> None:
        ran.append(n)

    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    future_id = await step.configure(lock="L", schedule_at=later).defer_async(n=-1)
    unread_id = await step.configure(lock="L", queue="nobody-reads").defer_async(n=-2)
    for n in range(3):
        await step.configure(lock="L", queue="a").defer_async(n=n)

    async with running_worker(async_app, queues=["a"]):
        done = await wait_until(
            db, "SELECT count(*) AS n FROM procq_jobs WHERE status = 'succeeded'", 3
        )
    assert done == 3
    assert ran == [0, 1, 2]
    statuses = db.execute(
        "SELECT id, status FROM procq_jobs WHERE id = ANY(%s) ORDER BY id",
        ([future_id, unread_id],),
    ).fetchall()
    assert [r["status"] for r in statuses] == ["todo", "todo"]


async def test_earlier_job_in_a_queue_another_worker_reads_keeps_lock_order(
    async_app: App, db
) -> None:
    ran: list[str] = []

    @async_app.task(name="step")
    async def step(n: str) -> None:
        ran.append(n)

    await step.configure(lock="L", queue="b").defer_async(n="b0")
    await step.configure(lock="L", queue="a").defer_async(n="a1")

    # a worker of queue "b" is registered (but not claiming yet): "a1" must wait for "b0"
    db.execute("INSERT INTO procq_workers (name, queues) VALUES ('b-reader', ARRAY['b'])")
    async with running_worker(async_app, queues=["a"]):
        await asyncio.sleep(0.5)
        assert ran == []
        async with running_worker(async_app, queues=["b"]):
            done = await wait_until(
                db, "SELECT count(*) AS n FROM procq_jobs WHERE status = 'succeeded'", 2
            )
    assert done == 2
    assert ran == ["b0", "a1"]


async def test_claim_takes_only_the_head_job_of_a_lock(async_app: App, db) -> None:
    @async_app.task(name="t")
    async def t() -> None: ...

    ids = [await t.configure(lock="L").defer_async() for _ in range(3)]
    free = await t.configure(lock="M").defer_async()
    worker_id = db.execute("INSERT INTO procq_workers (name) VALUES ('w') RETURNING id").fetchone()
    claim = queries["claim_jobs_any_queue"]
    params = {"limit": 10, "start": 10, "worker_id": worker_id["id"], "queues": None}

    rows = await async_app.async_connector().fetch_all_async(claim, params)
    assert sorted(r["id"] for r in rows) == [ids[0], free]
    rows = await async_app.async_connector().fetch_all_async(claim, params)
    assert rows == []  # ids[1] waits while ids[0] is doing


async def test_lock_race_is_claimed_again_and_logged_only_at_debug(
    async_app: App, db, caplog
) -> None:
    @async_app.task(name="t")
    async def t() -> None: ...

    first = await t.configure(lock="L").defer_async()
    second = await t.configure(lock="L").defer_async()
    db.execute("UPDATE procq_jobs SET status = 'doing' WHERE id = %s", (first,))
    connector = async_app.async_connector()
    with pytest.raises(LockRace):  # the unique index is the last line of defence
        await connector.execute_async(
            "UPDATE procq_jobs SET status = 'doing' WHERE id = %(id)s", {"id": second}
        )
    db.execute("UPDATE procq_jobs SET status = 'succeeded' WHERE id = %s", (first,))

    real = connector.fetch_all_async
    calls = 0

    async def racing(query: str, params: Any) -> list[Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise LockRace()
        return await real(query, params)

    worker = Worker(async_app, connector, install_signal_handlers=False)
    worker.worker_id = db.execute(
        "INSERT INTO procq_workers (name) VALUES ('w') RETURNING id"
    ).fetchone()["id"]
    connector.fetch_all_async = racing  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.DEBUG, logger="procq_sqla"):
            jobs = await worker._claim(5, 5)
    finally:
        del connector.fetch_all_async
    assert [job.id for job in jobs] == [second]
    assert calls == 2
    assert [r.levelname for r in caplog.records if "lock race" in r.message] == ["DEBUG"]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
