"""Connections cut while a job runs: the worker gets fresh ones and loses no outcome."""

from __future__ import annotations

from typing import Any

from polling import wait_until

from procq_sqla import App
from procq_sqla.testing import running_worker

CUT_OTHERS = (
    "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)

LISTENING = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND query ILIKE 'LISTEN%%'"
)


async def test_connections_cut_mid_task_lose_no_outcome(async_app: App, db: Any) -> None:
    runs: dict[str, int] = {}
    cut: list[int] = []

    @async_app.task(name="cutter")
    async def cutter(name: str) -> None:
        runs[name] = runs.get(name, 0) + 1
        if name == "cut" and not cut:
            # every other connection to the database: the worker's pool and its LISTEN
            cut.append(db.execute(CUT_OTHERS).fetchone()["n"])

    @async_app.task(name="after")
    async def after(i: int) -> None:
        runs[f"after{i}"] = runs.get(f"after{i}", 0) + 1

    async with running_worker(async_app, concurrency=2) as worker:
        # the cut must find the LISTEN connection as well as the pool's
        assert await wait_until(db, LISTENING, 1) == 1
        await cutter.defer_async(name="before")
        await cutter.defer_async(name="cut")
        cut_done = "SELECT status FROM procq_jobs WHERE args->>'name' = 'cut'"
        assert await wait_until(db, cut_done, "succeeded") == "succeeded"
        # deferred after the cut: NOTIFY works again, or the polling finds them
        await after.batch_defer_async(*({"i": i} for i in range(20)))
        done = "SELECT count(*) FROM procq_jobs WHERE status = 'succeeded'"
        assert await wait_until(db, done, 22) == 22
        alive = "SELECT count(*) FROM procq_workers WHERE id = %s"
        assert await wait_until(db, alive, 1, params=(worker.worker_id,)) == 1
    assert cut and cut[0] >= 2, "the worker's connections were cut"
    assert runs == {"before": 1, "cut": 1, **{f"after{i}": 1 for i in range(20)}}
    rows = db.execute("SELECT DISTINCT status, attempts FROM procq_jobs").fetchall()
    assert rows == [{"status": "succeeded", "attempts": 1}]
