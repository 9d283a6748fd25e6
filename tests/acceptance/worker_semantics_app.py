"""The app that acceptance tests run in real worker processes.

Every task writes a row to `effects` (created by the tests) when it starts and updates it
when it ends, so a test can count executions and check their order and overlap from the
database alone. Periodic schedules are registered only when PROCQ_TEST_PERIODIC is set.
Workers run it as `python -m procq_sqla --app worker_semantics_app:app worker ...`.
"""

from __future__ import annotations

import asyncio
import os
import time

import psycopg

from procq_sqla import App, JobContext, PsycopgConnector
from procq_sqla.exceptions import JobAborted

DATABASE_URL = os.environ.get("PROCQ_DATABASE_URL", "")
app = App(connector=PsycopgConnector(conninfo=DATABASE_URL))

START = "INSERT INTO effects (job_id, n, pid) VALUES (%(job_id)s, %(n)s, %(pid)s) RETURNING id"
END = "UPDATE effects SET finished_at = clock_timestamp() WHERE id = %(id)s"


async def _start(context: JobContext, n: int) -> int:
    row = await app.async_connector().fetch_one_async(
        START, {"job_id": context.job.id, "n": n, "pid": os.getpid()}
    )
    assert row is not None
    return int(row["id"])


async def _end(effect_id: int) -> None:
    await app.async_connector().execute_async(END, {"id": effect_id})


@app.task(name="record", pass_context=True)
async def record(context: JobContext, n: int, sleep: float = 0.0) -> None:
    effect = await _start(context, n)
    await asyncio.sleep(sleep)
    await _end(effect)


@app.task(name="record_retry", pass_context=True, retry=3)
async def record_retry(
    context: JobContext, n: int, fail_times: int = 0, sleep: float = 0.0
) -> None:
    effect = await _start(context, n)
    await asyncio.sleep(sleep)
    await _end(effect)
    if context.job.attempts <= fail_times:
        raise RuntimeError(f"failing on purpose (attempt {context.job.attempts})")


@app.task(name="record_sync", pass_context=True)
def record_sync(context: JobContext, n: int, sleep: float = 0.0) -> None:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        params = {"job_id": context.job.id, "n": n, "pid": os.getpid()}
        effect = conn.execute(START, params).fetchone()
        assert effect is not None
        deadline = time.monotonic() + sleep
        while time.monotonic() < deadline:
            if context.should_abort():
                raise JobAborted("stopped: abort requested")
            time.sleep(0.02)
        conn.execute(END, {"id": effect[0]})


if os.environ.get("PROCQ_TEST_PERIODIC"):

    @app.periodic(cron="* * * * * *", periodic_id="every-second", max_delay=1)
    @app.task(name="tick", pass_context=True)
    async def tick(context: JobContext, timestamp: int) -> None:
        effect = await _start(context, timestamp)
        await _end(effect)
