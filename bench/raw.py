"""Raw-PostgreSQL baselines: what the server does with no queue library in the way.

Each runs on `bench_raw_jobs` over one psycopg 3 connection in autocommit: a single-row
INSERT per commit, COPY, and the fastest claim loop a queue can run (claim 100 with
SKIP LOCKED, then complete them with one UPDATE).
"""

from __future__ import annotations

from typing import Any

import psycopg

from .common import NOOP_ASYNC, QUEUE, copy_jobs, settle

RAW_INSERT = (
    "INSERT INTO bench_raw_jobs (queue, task_name, args) VALUES (%s, %s, %s::jsonb) RETURNING id"
)
RAW_CLAIM = """
WITH c AS (
    SELECT id FROM bench_raw_jobs WHERE status = 'todo'
    ORDER BY priority DESC, id LIMIT 100 FOR UPDATE SKIP LOCKED
)
UPDATE bench_raw_jobs AS j SET status = 'doing', started_at = now(), attempts = attempts + 1
FROM c WHERE j.id = c.id
RETURNING j.id, j.task_name, j.args
"""
RAW_COMPLETE = (
    "UPDATE bench_raw_jobs SET status = 'succeeded', finished_at = now() WHERE id = ANY(%s)"
)


def single_inserts(conn: psycopg.Connection[Any], n: int) -> None:
    for i in range(n):
        conn.execute(RAW_INSERT, (QUEUE, NOOP_ASYNC, f'{{"i": {i}}}')).fetchone()


async def single_inserts_async(conn: psycopg.AsyncConnection[Any], n: int) -> None:
    """`single_inserts` through psycopg's asyncio connection: the baseline of
    `defer_async`, which pays for the same event-loop wake-up per statement."""
    for i in range(n):
        await (await conn.execute(RAW_INSERT, (QUEUE, NOOP_ASYNC, f'{{"i": {i}}}'))).fetchone()


def copy_rows(conn: psycopg.Connection[Any], n: int) -> None:
    copy_jobs(conn, n, table="bench_raw_jobs")


def seed(conn: psycopg.Connection[Any], n: int) -> None:
    copy_jobs(conn, n, table="bench_raw_jobs")
    settle(conn, "bench_raw_jobs")


def claim_loop(conn: psycopg.Connection[Any]) -> int:
    """Claim 100, 'run' them, complete them in one UPDATE; until the table is drained."""
    done = 0
    while True:
        rows = conn.execute(RAW_CLAIM).fetchall()
        if not rows:
            return done
        conn.execute(RAW_COMPLETE, ([row[0] for row in rows],))
        done += len(rows)
