"""What every workload shares: sizes, the bench database, seeding, timing, results.

The bench gets a database of its own on the server (`procq_bench_<pid>`, migrated with
`procq_sqla.migrations.upgrade`, dropped at the end) so it never touches anyone's jobs.
Jobs are seeded with COPY, untimed; a raw twin of the jobs table (`bench_raw_jobs`, the
same columns and claim index, no trigger) carries the raw-PostgreSQL baselines.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from procq_sqla import migrations
from procq_sqla.database import database_url, mask_password, sqlalchemy_url, with_dbname

QUEUE = "bench"
NOOP_ASYNC = "bench.noop_async"
NOOP_SYNC = "bench.noop_sync"
DURABILITY_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does; `--quick` shrinks everything."""

    defers: int = 5_000  # per run, in alternating chunks: long enough to outlast the noise
    batch: int = 100_000
    drain: int = 50_000
    latency_samples: int = 200
    finished_rows: int = 1_000_000
    finished_drain: int = 50_000  # as long as the drains: a 20,000 drain took 0.6 s, noise
    rss_jobs: int = 100_000
    rss_warmup: int = 2_000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            defers=200,
            batch=10_000,
            drain=3_000,
            latency_samples=40,
            finished_rows=30_000,
            finished_drain=2_000,
            rss_jobs=5_000,
            rss_warmup=500,
        )


@dataclass
class Measure:
    """One workload: our figure per run, the baseline per run, the target."""

    name: str
    title: str
    unit: str  # "jobs/s", "ms", "MB"
    baseline_title: str | None = None
    target: str = ""
    runs: list[float] = field(default_factory=list)
    baseline_runs: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    check: Callable[[Measure], bool | None] | None = None
    note: str = ""
    peer: float | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline_runs) if self.baseline_runs else None

    @property
    def ratios(self) -> list[float]:
        """Ours / baseline for each run, both measured back to back."""
        return [a / b for a, b in zip(self.runs, self.baseline_runs, strict=False) if b]

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def met(self) -> bool | None:
        if self.check is None or not self.runs:
            return None
        return self.check(self)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "unit": self.unit,
            "runs": self.runs,
            "median": self.median,
            "min": min(self.runs) if self.runs else None,
            "max": max(self.runs) if self.runs else None,
            "baseline": self.baseline_title,
            "baseline_runs": self.baseline_runs,
            "baseline_median": self.baseline_median,
            "ratios": self.ratios,
            "ratio": self.ratio,
            "target": self.target,
            "met": self.met,
            "peer_procrastinate": self.peer,
            "note": self.note,
            **({"extra": self.extra} if self.extra else {}),
        }


def ratio_at_least(threshold: float) -> Callable[[Measure], bool | None]:
    def check(m: Measure) -> bool | None:
        return None if m.ratio is None else m.ratio >= threshold

    return check


class BenchDB:
    """A fresh, migrated database of our own on the bench server."""

    def __init__(self) -> None:
        self.server_url = database_url()
        self.name = f"procq_bench_{os.getpid()}"
        self.url = ""

    def create(self) -> str:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            ident = sql.Identifier(self.name)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
            except psycopg.errors.InsufficientPrivilege as exc:
                raise SystemExit(
                    f"cannot create the bench database on {mask_password(self.server_url)!r}: "
                    "the bench needs a role with CREATEDB (it never runs on existing data)"
                ) from exc
        self.url = with_dbname(self.server_url, self.name)
        migrations.upgrade(sqlalchemy_url(self.url))
        with self.connect() as conn:
            conn.execute(RAW_TABLE)
        return self.url

    def drop(self) -> None:
        if not self.url:
            return
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True)

    def server_facts(self) -> dict[str, Any]:
        with self.connect() as conn:
            facts: dict[str, Any] = {
                "server_version": conn.execute("SHOW server_version").fetchone()[0],  # type: ignore[index]
            }
            for name in DURABILITY_SETTINGS:
                facts[name] = conn.execute(
                    sql.SQL("SHOW {}").format(sql.Identifier(name))
                ).fetchone()[0]  # type: ignore[index]
        facts["embedded"] = not os.environ.get("PROCQ_DATABASE_URL") and self.server_url.startswith(
            "postgresql://postgres:@"
        )
        facts["server"] = mask_password(self.server_url) or "(PG* variables)"
        return facts

    def reset(self, conn: psycopg.Connection[Any]) -> None:
        """Empty both job tables and tidy them, so each run starts from the same state."""
        conn.execute("TRUNCATE procq_jobs, procq_workers, bench_raw_jobs RESTART IDENTITY")
        conn.execute("VACUUM ANALYZE procq_jobs")
        conn.execute("VACUUM ANALYZE bench_raw_jobs")


# The raw baseline's table: the jobs table's shape and claim index, nothing else.
RAW_TABLE = """
CREATE TABLE bench_raw_jobs (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    queue text NOT NULL DEFAULT 'default',
    task_name text NOT NULL,
    args jsonb NOT NULL DEFAULT '{}',
    status text NOT NULL DEFAULT 'todo',
    priority integer NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX bench_raw_jobs_fetch_idx ON bench_raw_jobs (priority DESC, id)
    WHERE status = 'todo';
"""


def copy_jobs(
    conn: psycopg.Connection[Any],
    n: int,
    *,
    table: str = "procq_jobs",
    queue: str = QUEUE,
    task_name: str = NOOP_ASYNC,
    status: str = "todo",
) -> None:
    """Insert `n` jobs with COPY (seeding, untimed unless the caller times it)."""
    columns = "(queue, task_name, args, status)"
    if status != "todo":
        columns = "(queue, task_name, args, status, started_at, finished_at)"
    query = f"COPY {table} {columns} FROM STDIN"
    with conn.cursor() as cur, cur.copy(query) as copy:
        for i in range(n):
            args = f'{{"i": {i}}}'
            if status == "todo":
                copy.write_row((queue, task_name, args, status))
            else:
                copy.write_row((queue, task_name, args, status, "now", "now"))


def settle(conn: psycopg.Connection[Any], table: str = "procq_jobs") -> None:
    """After seeding (untimed): fresh statistics, and the seeding's dirty pages written out
    now rather than by a checkpoint in the middle of the measurement."""
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
    # on an external server we may lack the right: the figures are then only noisier
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def dump_json(path: str, payload: dict[str, Any]) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.write("\n")
