"""Rescue of dead workers' jobs, database outages, graceful shutdown, and retention."""

from __future__ import annotations

import asyncio
import time

import pytest
from polling import wait_until

from procq_sqla import App
from procq_sqla.testing import running_worker
from procq_sqla.worker import Worker


def dead_worker_with_jobs(db, *task_names: str) -> tuple[int, list[int]]:
    dead = db.execute(
        "INSERT INTO procq_workers (name, last_heartbeat) "
        "VALUES ('gone', now() - interval '1 hour') RETURNING id"
    ).fetchone()["id"]
    ids = [
        db.execute(
            "INSERT INTO procq_jobs (task_name, status, attempts, worker_id, started_at) "
            "VALUES (%s, 'doing', 1, %s, now()) RETURNING id",
            (name, dead),
        ).fetchone()["id"]
        for name in task_names
    ]
    return dead, ids


async def test_jobs_of_a_dead_worker_are_rescued_or_failed_when_out_of_retries(
    async_app: App, db
) -> None:
    ran: list[str] = []

    @async_app.task(name="retried", retry=2)
    async def retried() -> None:
        ran.append("retried")

    @async_app.task(name="once")
    async def once() -> None:
        ran.append("once")

    dead, (retried_id, once_id) = dead_worker_with_jobs(db, "retried", "once")
    async with running_worker(async_app, heartbeat_interval=0.2, stalled_worker_timeout=1.0):
        status = "SELECT status FROM procq_jobs WHERE id = %s"
        assert await wait_until(db, status, "succeeded", params=(retried_id,)) == "succeeded"
        assert await wait_until(db, status, "failed", params=(once_id,)) == "failed"
    assert ran == ["retried"]
    rows = {r["id"]: r for r in db.execute("SELECT * FROM procq_jobs").fetchall()}
    assert rows[retried_id]["attempts"] == 2  # the dead worker's attempt counts
    assert rows[once_id]["last_error"] == f"worker {dead} died while running this job"
    assert (
        db.execute("SELECT count(*) AS n FROM procq_workers WHERE id = %s", (dead,)).fetchone()["n"]
        == 0
    )


async def test_worker_back_from_an_outage_waits_one_beat_before_rescuing(
    async_app: App, db
) -> None:
    @async_app.task(name="retried", retry=2)
    async def retried() -> None: ...

    _, (job_id,) = dead_worker_with_jobs(db, "retried")
    async with running_worker(
        async_app, heartbeat_interval=0.3, stalled_worker_timeout=1.0
    ) as worker:
        while worker.worker_id is None:
            await asyncio.sleep(0.01)
        worker._last_beat -= 100  # as if this worker had been cut off for 100 s
        await asyncio.sleep(0.45)  # one beat: the others get a chance to beat first
        status = "SELECT status FROM procq_jobs WHERE id = %s"
        assert db.execute(status, (job_id,)).fetchone()["status"] == "doing"
        assert await wait_until(db, status, "succeeded", params=(job_id,)) == "succeeded"


async def test_live_workers_heartbeat_and_are_never_rescued(async_app: App, db) -> None:
    @async_app.task(name="long")
    async def long() -> None:
        await asyncio.sleep(2.0)

    async with (
        running_worker(async_app, heartbeat_interval=0.2, stalled_worker_timeout=0.6) as worker,
        running_worker(async_app, heartbeat_interval=0.2, stalled_worker_timeout=0.6),
    ):
        job_id = await long.defer_async()
        await wait_until(db, "SELECT status FROM procq_jobs", "doing")
        await asyncio.sleep(1.2)  # two stalled timeouts: the heartbeat keeps it alive
        row = db.execute("SELECT * FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
        assert (row["status"], row["attempts"]) == ("doing", 1)
        age = db.execute(
            "SELECT extract(epoch FROM now() - last_heartbeat) AS age FROM procq_workers "
            "WHERE id = %s",
            (worker.worker_id,),
        ).fetchone()["age"]
        assert age < 0.6
        await wait_until(db, "SELECT status FROM procq_jobs", "succeeded")


async def test_worker_survives_terminated_connections_mid_drain(async_app: App, db) -> None:
    done: list[int] = []

    @async_app.task(name="t", retry=5)
    async def t(n: int) -> None:
        await asyncio.sleep(0.02)
        done.append(n)

    await t.batch_defer_async(*({"n": n} for n in range(60)))
    kill = (
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    # a long polling interval: after the outage, only a reconnected listener wakes it fast
    async with running_worker(async_app, concurrency=4, fetch_job_polling_interval=30):
        await wait_until(
            db, "SELECT count(*) > 10 FROM procq_jobs WHERE status = 'succeeded'", True
        )
        assert db.execute(kill).fetchone()["n"] >= 1
        await asyncio.sleep(0.3)
        db.execute(kill)
        assert (
            await wait_until(
                db, "SELECT count(*) FROM procq_jobs WHERE status = 'succeeded'", 60, timeout=20
            )
            == 60
        )
        await asyncio.sleep(1.5)  # let the listener come back
        late = await t.defer_async(n=1000)
        started = time.monotonic()
        await wait_until(
            db, "SELECT status FROM procq_jobs WHERE id = %s", "succeeded", params=(late,)
        )
        assert time.monotonic() - started < 3
    assert sorted(set(done)) == [*range(60), 1000]


async def test_graceful_shutdown_finishes_short_jobs_and_returns_long_ones(
    async_app: App, db
) -> None:
    @async_app.task(name="sleep")
    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds)

    worker = Worker(
        async_app,
        async_app.async_connector(),
        concurrency=2,
        shutdown_graceful_timeout=0.5,
        install_signal_handlers=False,
    )
    run = asyncio.create_task(worker.run())
    short = await sleep.defer_async(seconds=0.2)
    long = await sleep.defer_async(seconds=30)
    await wait_until(db, "SELECT count(*) FROM procq_jobs WHERE status = 'doing'", 2)
    stopping = time.monotonic()
    worker.stop()
    await asyncio.wait_for(run, 5)
    assert time.monotonic() - stopping < 2
    rows = {r["id"]: r for r in db.execute("SELECT * FROM procq_jobs").fetchall()}
    assert rows[short]["status"] == "succeeded"
    assert rows[long]["status"] == "todo"
    assert rows[long]["worker_id"] is None
    assert rows[long]["last_error"] == "the worker shut down before the job finished"
    assert db.execute("SELECT count(*) AS n FROM procq_workers").fetchone()["n"] == 0


async def test_second_stop_request_stops_waiting_for_running_jobs(async_app: App, db) -> None:
    @async_app.task(name="sleep")
    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds)

    worker = Worker(async_app, async_app.async_connector(), install_signal_handlers=False)
    run = asyncio.create_task(worker.run())
    job_id = await sleep.defer_async(seconds=30)
    await wait_until(db, "SELECT status FROM procq_jobs", "doing")
    worker.stop()  # no graceful timeout: it would wait 30 s
    await asyncio.sleep(0.3)
    assert not run.done()
    worker.stop()
    await asyncio.wait_for(run, 3)
    row = db.execute("SELECT status, attempts FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert (row["status"], row["attempts"]) == ("todo", 1)


@pytest.mark.parametrize(
    ("delete_jobs", "left"),
    [("never", ["failed", "succeeded"]), ("successful", ["failed"]), ("always", [])],
)
async def test_delete_jobs_option_removes_finished_jobs(
    async_app: App, db, delete_jobs: str, left: list[str]
) -> None:
    @async_app.task(name="t")
    async def t(fail: bool) -> None:
        if fail:
            raise RuntimeError("no")

    await t.defer_async(fail=False)
    await t.defer_async(fail=True)
    async with running_worker(async_app, delete_jobs=delete_jobs) as worker:
        await wait_until(db, "SELECT count(*) FROM procq_jobs WHERE status <> 'todo'", len(left))
        for _ in range(100):
            if worker.processed == 2:
                break
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    rows = db.execute("SELECT status FROM procq_jobs ORDER BY status").fetchall()
    assert [r["status"] for r in rows] == left
