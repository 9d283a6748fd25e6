"""Looking at the jobs table from a test: counting rows, and polling while a worker runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def wait_until(
    db: Any, query: str, expected: Any, *, params: Any = (), timeout: float = 10
) -> Any:
    """Poll a one-value query until it returns `expected` or `timeout` passes; returns
    the last value seen (None for no row), for the caller to assert on."""
    deadline = time.monotonic() + timeout
    while True:
        row = db.execute(query, params).fetchone()
        got = next(iter(row.values())) if row else None
        if got == expected or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.01)


async def eventually(condition: Callable[[], bool], timeout: float = 10) -> bool:
    """Poll a condition of the test's own state (not a query) until it holds or
    `timeout` passes; returns its last value, for the caller to assert on."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def wait_for_status(db: Any, job_id: int, status: str, timeout: float = 10) -> str:
    """Poll a job's status until it is `status`; returns the last one seen."""
    query = "SELECT status FROM procq_jobs WHERE id = %s"
    return str(await wait_until(db, query, status, params=(job_id,), timeout=timeout))


def count_jobs(db: Any, status: str | None = None) -> int:
    """Rows in procq_jobs, of one status or all."""
    if status is None:
        row = db.execute("SELECT count(*) AS n FROM procq_jobs").fetchone()
    else:
        row = db.execute("SELECT count(*) AS n FROM procq_jobs WHERE status = %s", (status,))
        row = row.fetchone()
    return int(row["n"])
