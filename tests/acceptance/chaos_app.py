"""The app the chaos run (tests/acceptance/test_chaos.py) runs in its worker processes.

Its one task writes a row to `chaos_effects` when it starts (job id, attempt, pid) and
stamps `finished_at` when its body is done, so the harness can tell, from the database
alone, how often each job ran, which runs were cut short, and by which process. The task
retries on any error: a run whose own connection was killed fails and runs again, and a
dead worker's job is rescued back to `todo` and runs again.
Workers run it as `python -m procq_sqla --app chaos_app:app worker ...`.
"""

from __future__ import annotations

import asyncio
import os

from procq_sqla import App, JobContext, PsycopgConnector, RetryStrategy

DATABASE_URL = os.environ.get("PROCQ_DATABASE_URL", "")
app = App(connector=PsycopgConnector(conninfo=DATABASE_URL))

EFFECTS_DDL = """
CREATE TABLE chaos_effects (
    id bigserial PRIMARY KEY,
    job_id bigint NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
)
"""
START = (
    "INSERT INTO chaos_effects (job_id, attempt, pid) "
    "VALUES (%(job_id)s, %(attempt)s, %(pid)s) RETURNING id"
)
END = "UPDATE chaos_effects SET finished_at = clock_timestamp() WHERE id = %(id)s"


@app.task(name="chaos", pass_context=True, retry=RetryStrategy(max_attempts=50, wait=0.2))
async def chaos(context: JobContext, n: int, sleep: float = 0.0) -> None:
    connector = app.async_connector()
    params = {"job_id": context.job.id, "attempt": context.job.attempts, "pid": os.getpid()}
    row = await connector.fetch_one_async(START, params)
    assert row is not None
    await asyncio.sleep(sleep)
    await connector.execute_async(END, {"id": row["id"]})
