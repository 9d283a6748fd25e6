"""The workloads of issue 7, each paired with its baseline and target.

Every run measures the baseline and ours back to back on the same server, so the ratio
of a run compares figures taken under the same load; the reported ratio is the median
of the per-run ratios.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from procq_sqla.database import with_dbname

from . import peer, procq, raw
from .common import (
    NOOP_ASYNC,
    NOOP_SYNC,
    BenchDB,
    Measure,
    Sizes,
    copy_jobs,
    ratio_at_least,
    settle,
)
from .common import percentile as pct

Log = Callable[[str], None]
# Defers and their baseline alternate in this many chunks per run (bursty shared disks).
DEFER_CHUNKS = 20


@dataclass
class Context:
    db: BenchDB
    sizes: Sizes
    runs: int
    log: Log
    big_db: BenchDB | None = None

    @property
    def url(self) -> str:
        return self.db.url

    def fresh(self) -> Any:
        """A connection to the bench database with both job tables emptied."""
        conn = self.db.connect()
        self.db.reset(conn)
        return conn


def defer_workload(ctx: Context, name: str) -> Measure:
    n = ctx.sizes.defers
    baseline_title = "single-row INSERT, autocommit"
    if name == "defer_async":
        title, opener = "defer_async(), PsycopgConnector", None
        baseline_title += ", psycopg AsyncConnection"
    else:
        title, opener = procq.SYNC_CONNECTORS[name]
    m = Measure(
        name,
        title,
        "jobs/s",
        baseline_title=baseline_title,
        target="≥0.9x baseline",
        check=ratio_at_least(0.9),
    )
    if opener is not None:
        with ctx.fresh():
            why = procq.connector_available(opener, ctx.url)
        if why:
            m.note = why
            return m
    for run in range(ctx.runs):
        with ctx.fresh() as conn:
            size = n // DEFER_CHUNKS

            def baseline(count: int) -> None:
                raw.single_inserts(conn, count)

            if opener is None:
                ours, base = procq.defer_async_many(ctx.url, n, DEFER_CHUNKS)
            else:
                ours, base = procq.defer_many(opener, ctx.url, n, baseline, DEFER_CHUNKS)
        m.runs.append(size * DEFER_CHUNKS / ours)
        m.baseline_runs.append(size * DEFER_CHUNKS / base)
        ctx.log(f"{name} run {run + 1}: {m.runs[-1]:,.0f}/s vs {m.baseline_runs[-1]:,.0f}/s")
    return m


def batch_workload(ctx: Context) -> Measure:
    n = ctx.sizes.batch
    m = Measure(
        "batch_defer",
        f"batch_defer() of {n:,} jobs",
        "jobs/s",
        baseline_title=f"COPY of {n:,} rows",
        target="≥0.5x baseline",
        check=ratio_at_least(0.5),
    )
    for run in range(ctx.runs):
        with ctx.fresh() as conn:
            m.baseline_runs.append(n / _timed(lambda: raw.copy_rows(conn, n)))
        with ctx.fresh():
            m.runs.append(n / procq.batch_defer(ctx.url, n))
        ctx.log(f"batch_defer run {run + 1}: {m.runs[-1]:,.0f}/s vs {m.baseline_runs[-1]:,.0f}/s")
    return m


def drain_workload(ctx: Context, task_name: str) -> Measure:
    n = ctx.sizes.drain
    is_async = task_name == NOOP_ASYNC
    kind = "async def" if is_async else "def"
    m = Measure(
        "drain_async" if is_async else "drain_sync",
        f"worker drain of {n:,} no-op `{kind}` jobs, concurrency 10",
        "jobs/s",
        baseline_title="claim 100 SKIP LOCKED + 1 UPDATE, 1 conn",
        target="≥0.5x and ≥10,000/s" if is_async else "≥0.3x baseline",
    )
    if is_async:
        m.check = lambda m: None if m.ratio is None else (m.ratio >= 0.5 and m.median >= 10_000)  # type: ignore[operator]
    else:
        m.check = ratio_at_least(0.3)
    for run in range(ctx.runs):
        with ctx.fresh() as conn:
            raw.seed(conn, n)
            m.baseline_runs.append(n / _timed(lambda: raw.claim_loop(conn)))
        with ctx.fresh() as conn:
            copy_jobs(conn, n, task_name=task_name)
            settle(conn)
        m.runs.append(n / procq.drain(ctx.url, n))
        ctx.log(f"{m.name} run {run + 1}: {m.runs[-1]:,.0f}/s vs {m.baseline_runs[-1]:,.0f}/s")
    return m


def latency_workloads(ctx: Context) -> list[Measure]:
    n = ctx.sizes.latency_samples
    med = Measure(
        "latency_median",
        f"latency defer → task starts, median of {n}",
        "ms",
        target="≤ 1.5 ms",
        check=lambda m: None if m.median is None else m.median <= 1.5,
    )
    p99 = Measure(
        "latency_p99",
        f"latency defer → task starts, p99 of {n}",
        "ms",
        target="≤ 4 ms",
        check=lambda m: None if m.median is None else m.median <= 4.0,
    )
    for run in range(ctx.runs):
        with ctx.fresh():
            samples = procq.latency(ctx.url, n)
        med.runs.append(statistics.median(samples))
        p99.runs.append(pct(samples, 0.99))
        ctx.log(f"latency run {run + 1}: median {med.runs[-1]:.2f} ms, p99 {p99.runs[-1]:.2f} ms")
    return [med, p99]


def finished_workload(ctx: Context) -> Measure:
    n, big = ctx.sizes.finished_drain, ctx.sizes.finished_rows
    m = Measure(
        "drain_finished",
        f"drain of {n:,} jobs with {big:,} finished jobs in the table",
        "jobs/s",
        baseline_title="the same drain, empty table",
        target="≥0.9x baseline",
        check=ratio_at_least(0.9),
    )
    big_db = ctx.big_db = BenchDB()
    big_db.name = ctx.db.name + "_big"
    big_db.url = with_dbname(ctx.db.server_url, big_db.name)
    big_db.create()
    ctx.log(f"seeding {big:,} finished jobs")
    with big_db.connect() as conn:
        copy_jobs(conn, big, status="succeeded", queue="done")
        settle(conn)
    wal_empty: list[float] = []
    wal_big: list[float] = []
    for run in range(ctx.runs):
        with ctx.fresh() as conn:
            copy_jobs(conn, n)
            settle(conn)
        with ctx.db.connect() as conn:
            wal = _wal_lsn(conn)
            m.baseline_runs.append(n / procq.drain(ctx.url, n))
            wal_empty.append(_wal_mb_since(conn, wal))
        with big_db.connect() as conn:
            conn.execute("DELETE FROM procq_jobs WHERE queue = 'bench'")
            copy_jobs(conn, n)
            settle(conn)
        with big_db.connect() as conn:
            wal = _wal_lsn(conn)
            m.runs.append(n / procq.drain(big_db.url, n))
            wal_big.append(_wal_mb_since(conn, wal))
        ctx.log(
            f"drain_finished run {run + 1}: {m.runs[-1]:,.0f}/s vs {m.baseline_runs[-1]:,.0f}/s"
            f" (WAL {wal_big[-1]:.1f} MB vs {wal_empty[-1]:.1f} MB)"
        )
    m.extra["wal_mb"] = {"with_finished": wal_big, "empty": wal_empty}
    m.note = (
        f"WAL written per drain: {statistics.median(wal_big):.1f} MB with the finished jobs, "
        f"{statistics.median(wal_empty):.1f} MB on the empty table"
    )
    return m


def _wal_lsn(conn: Any) -> str:
    return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])


def _wal_mb_since(conn: Any, lsn: str) -> float:
    row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (lsn,))
    return float(row.fetchone()[0]) / 2**20


def rss_workload(ctx: Context) -> Measure:
    n = ctx.sizes.rss_jobs
    m = Measure(
        "rss_growth",
        f"worker RSS growth over {n:,} jobs (after {ctx.sizes.rss_warmup:,} warm-up)",
        "MB",
        target="< 20 MB",
        check=lambda m: None if m.median is None else m.median < 20,
    )
    peaks: list[float] = []
    befores: list[float] = []
    for run in range(ctx.runs):
        with ctx.fresh() as conn:
            copy_jobs(conn, ctx.sizes.rss_warmup, queue="rss_warmup")
            copy_jobs(conn, n, queue="rss")
            settle(conn)
        result = procq.rss(ctx.url, "rss_warmup", "rss")
        m.runs.append((result["after"] - result["before"]) / 2**20)
        peaks.append((result["peak"] - result["before"]) / 2**20)
        befores.append(result["before"] / 2**20)
        ctx.log(
            f"rss run {run + 1}: +{m.runs[-1]:.1f} MB (peak +{peaks[-1]:.1f} MB, "
            f"{n / result['seconds']:,.0f} jobs/s)"
        )
    m.extra["peak_growth_mb"] = peaks
    m.extra["rss_before_mb"] = befores
    m.note = (
        f"RSS after warm-up {statistics.median(befores):.1f} MB; peak growth {max(peaks):.1f} MB"
    )
    return m


def _timed(fn: Callable[[], Any]) -> float:
    import time

    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


WORKLOADS: dict[str, Callable[[Context], list[Measure]]] = {
    "defer_sqlalchemy_psycopg2": lambda c: [defer_workload(c, "defer_sqlalchemy_psycopg2")],
    "defer_sync_psycopg": lambda c: [defer_workload(c, "defer_sync_psycopg")],
    "defer_psycopg_twin": lambda c: [defer_workload(c, "defer_psycopg_twin")],
    "defer_async": lambda c: [defer_workload(c, "defer_async")],
    "defer_psycopg2": lambda c: [defer_workload(c, "defer_psycopg2")],
    "batch_defer": lambda c: [batch_workload(c)],
    "drain_async": lambda c: [drain_workload(c, NOOP_ASYNC)],
    "drain_sync": lambda c: [drain_workload(c, NOOP_SYNC)],
    "latency": latency_workloads,
    "drain_finished": lambda c: [finished_workload(c)],
    "rss": lambda c: [rss_workload(c)],
}


def add_peer_figures(ctx: Context, measures: list[Measure]) -> str | None:
    """procrastinate's figures beside ours, when it is installed; else why not."""
    if not peer.available():
        return "procrastinate is not installed: no peer figures"
    figures = peer.run(ctx.db.server_url, ctx.db.name + "_peer", ctx.sizes, ctx.log)
    for m in measures:
        if m.name in figures:
            m.peer = figures[m.name]
    return None
