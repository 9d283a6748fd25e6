"""Queueing locks: at most one waiting job per value, at defer, in batches and at retry."""

from __future__ import annotations

import asyncio

import pytest
from polling import wait_for_status

from procq_sqla import AlreadyEnqueued, App
from procq_sqla.sql import queries
from procq_sqla.testing import running_worker


def test_second_defer_with_a_waiting_queueing_lock_raises_already_enqueued(
    sync_app: App, db
) -> None:
    @sync_app.task(name="t", queueing_lock="report")
    def t(n: int) -> None: ...

    first = t.defer(n=1)
    with pytest.raises(AlreadyEnqueued, match="same queueing lock is already waiting"):
        t.defer(n=2)
    other = t.configure(queueing_lock="other").defer(n=3)

    db.execute("UPDATE procq_jobs SET status = 'doing' WHERE id = %s", (first,))
    again = t.defer(n=4)  # the first one runs now: a new one may wait
    rows = db.execute("SELECT id FROM procq_jobs ORDER BY id").fetchall()
    assert [r["id"] for r in rows] == [first, other, again]


def test_batch_defer_skip_mode_leaves_duplicates_out(sync_app: App, db) -> None:
    @sync_app.task(name="t")
    def t(n: int) -> None: ...

    waiting = t.configure(queueing_lock="a").defer(n=0)
    skipped = t.configure(queueing_lock="a").batch_defer(
        {"n": 1}, {"n": 2}, ignore_already_enqueued=True
    )
    fresh = t.configure(queueing_lock="b").batch_defer(
        {"n": 3}, {"n": 4}, ignore_already_enqueued=True
    )
    with pytest.raises(AlreadyEnqueued):
        t.configure(queueing_lock="c").batch_defer({"n": 5}, {"n": 6})

    assert skipped == []
    assert len(fresh) == 1
    rows = db.execute("SELECT id, args FROM procq_jobs ORDER BY id").fetchall()
    assert [(r["id"], r["args"]["n"]) for r in rows] == [(waiting, 0), (fresh[0], 3)]


async def test_retry_colliding_with_a_waiting_job_fails_with_a_note(async_app: App, db) -> None:
    release = asyncio.Event()

    @async_app.task(name="flaky", queueing_lock="sync-user", retry=5)
    async def flaky(n: int) -> None:
        if n == 1:
            await release.wait()
            raise RuntimeError("boom")

    async with running_worker(async_app, queues=["default"]):
        running = await flaky.defer_async(n=1)
        assert await wait_for_status(db, running, "doing") == "doing"
        # allowed, the first one is running; parked in a queue this worker does not read
        waiting = await flaky.configure(queue="parked").defer_async(n=2)
        release.set()
        assert await wait_for_status(db, running, "failed") == "failed"
    row = db.execute("SELECT * FROM procq_jobs WHERE id = %s", (running,)).fetchone()
    assert row["attempts"] == 1
    assert await wait_for_status(db, waiting, "todo") == "todo"
    assert "RuntimeError: boom" in row["last_error"]
    assert row["last_error"].endswith(
        "not retried: another job with the same queueing lock is already waiting"
    )
    assert (
        db.execute("SELECT count(*) AS n FROM procq_jobs WHERE status = 'doing'").fetchone()["n"]
        == 0
    )


async def test_two_retries_of_one_queueing_lock_in_one_batch_keep_one(async_app: App, db) -> None:
    @async_app.task(name="t")
    async def t() -> None: ...

    worker = db.execute("INSERT INTO procq_workers (name) VALUES ('w') RETURNING id").fetchone()
    ids = [
        db.execute(
            "INSERT INTO procq_jobs (task_name, queueing_lock, status, worker_id) "
            "VALUES ('t', 'q', 'doing', %s) RETURNING id",
            (worker["id"],),
        ).fetchone()["id"]
        for _ in range(2)
    ]
    await async_app.async_connector().fetch_all_async(
        queries["finish_jobs"],
        {
            "ids": ids,
            "statuses": ["todo", "todo"],
            "errors": ["e1", "e2"],
            "delays": [0.0, 0.0],
            "since": [0.5, 0.5],
            "worker_id": worker["id"],
        },
    )
    rows = db.execute(
        "SELECT status, last_error FROM procq_jobs ORDER BY id", prepare=False
    ).fetchall()
    assert [r["status"] for r in rows] == ["todo", "failed"]
    assert rows[1]["last_error"].startswith("e2\nnot retried")
