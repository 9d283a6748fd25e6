"""Connections cut while a job runs: the worker gets fresh ones and loses no outcome."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from polling import wait_until

from procq_sqla import App, PsycopgConnector
from procq_sqla import worker as worker_module
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


async def test_a_stop_during_an_outage_gives_up_on_outcomes_in_time(
    server_url: str,
    db_url: str,
    db: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(worker_module, "OUTCOMES_AT_STOP_TIMEOUT", 1.0)
    monkeypatch.setattr(worker_module, "UNREGISTER_AT_STOP_TIMEOUT", 1.0)
    monkeypatch.setattr(worker_module, "STUCK_CLAIM_AT_STOP", 1.0)
    name = db.execute("SELECT current_database() AS d").fetchone()["d"]
    app = App(connector=PsycopgConnector(conninfo=db_url, max_size=2))  # pool timeout 30 s
    release, finished = asyncio.Event(), asyncio.Event()

    @app.task(name="slow")
    async def slow() -> None:
        await release.wait()
        finished.set()

    admin = psycopg.connect(server_url, autocommit=True)  # another database: ALTER DATABASE
    async with app.open_async():
        job_id = await slow.defer_async()
        try:
            async with running_worker(app, concurrency=1, stop_timeout=60):
                running = "SELECT status FROM procq_jobs WHERE id = %s"
                assert await wait_until(db, running, "doing", params=(job_id,)) == "doing"
                # the outage: no new connection is accepted, and the worker's are cut
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                db.execute(CUT_OTHERS)
                release.set()  # the job succeeds; its outcome cannot be written
                await asyncio.wait_for(finished.wait(), 5)
                started = time.monotonic()
            stopped_after = time.monotonic() - started
        finally:
            release.set()
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            admin.close()

    # unbounded, an attempt to write waits for the pool's 30 s timeout
    assert stopped_after < 10, f"the stop took {stopped_after:.1f} s"
    assert "giving up on recording 1 outcome(s)" in caplog.text
    row = db.execute("SELECT status FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row == {"status": "doing"}  # left for the rescue once the heartbeat expires
