"""procq_sqla's side of each workload, through the public API only.

Defers go through every connector that can be imported; the worker runs as
`app.run_worker_async(queues=..., concurrency=10, wait=False)`, which drains the queue
and returns, and is timed from call to return. Latency and memory are measured on a
worker in a separate process (see `bench._child`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from procq_sqla import App, PsycopgConnector, SyncPsycopgConnector
from procq_sqla.database import sqlalchemy_url

from . import raw
from ._child import LATENCY_QUEUE, LATENCY_TASK
from .common import NOOP_ASYNC, NOOP_SYNC, QUEUE


def make_app(connector: Any) -> App:
    app = App(connector=connector)

    @app.task(name=NOOP_ASYNC, queue=QUEUE)
    async def noop_async(i: int) -> None:
        return None

    @app.task(name=NOOP_SYNC, queue=QUEUE)
    def noop_sync(i: int) -> None:
        return None

    @app.task(name=LATENCY_TASK, queue=LATENCY_QUEUE)
    async def probe(seq: int) -> None:
        return None

    return app


# -- defer, one per call, through each connector ----------------------------------------


def _sync_psycopg(url: str) -> App:
    return make_app(SyncPsycopgConnector(conninfo=url)).open()  # App closes at `with` exit


def _psycopg_twin(url: str) -> App:
    return make_app(PsycopgConnector(conninfo=url)).open()


@contextmanager
def _sqlalchemy_psycopg2(url: str) -> Iterator[App]:
    from sqlalchemy import create_engine

    from procq_sqla.contrib.sqlalchemy import SQLAlchemyPsycopg2Connector

    engine = create_engine(sqlalchemy_url(url, "psycopg2"), pool_size=5)
    app = make_app(SQLAlchemyPsycopg2Connector()).open(engine)
    try:
        yield app
    finally:
        app.close()
        engine.dispose()


def _psycopg2(url: str) -> App:
    from procq_sqla.connectors.psycopg2 import Psycopg2Connector

    return make_app(Psycopg2Connector(dsn=url)).open()


SYNC_CONNECTORS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "defer_sqlalchemy_psycopg2": (
        "defer(), SQLAlchemyPsycopg2Connector on a borrowed engine",
        _sqlalchemy_psycopg2,
    ),
    "defer_sync_psycopg": ("defer(), SyncPsycopgConnector", _sync_psycopg),
    "defer_psycopg_twin": ("defer(), PsycopgConnector's sync twin", _psycopg_twin),
    "defer_psycopg2": ("defer(), Psycopg2Connector", _psycopg2),
}


def connector_available(opener: Callable[[str], Any], url: str) -> str | None:
    """None when the connector can be opened here, else why not."""
    try:
        with opener(url) as app:
            app.tasks[NOOP_ASYNC].defer(i=-1)
    except (ImportError, AttributeError) as exc:
        return f"not available ({type(exc).__name__}: {exc})"
    return None


def defer_many(
    opener: Callable[[str], Any], url: str, n: int, baseline: Callable[[int], None], chunks: int
) -> tuple[float, float]:
    """Seconds for n sequential defer() calls and for n baseline operations, measured in
    alternating chunks so that both sides see the same bursts of load."""
    ours = base = 0.0
    size = max(1, n // chunks)
    with opener(url) as app:
        task = app.tasks[NOOP_ASYNC]
        task.defer(i=-1)  # warm the pool
        baseline(1)
        for chunk in range(chunks):
            started = time.perf_counter()
            baseline(size)
            base += time.perf_counter() - started
            started = time.perf_counter()
            for i in range(chunk * size, (chunk + 1) * size):
                task.defer(i=i)
            ours += time.perf_counter() - started
    return ours, base


def defer_async_many(url: str, n: int, chunks: int) -> tuple[float, float]:
    """The same for `await defer_async()`, against the same INSERT through psycopg's
    `AsyncConnection` on the same event loop (both pay for the loop's wake-up per
    statement, which costs a sync connection nothing)."""

    async def run() -> tuple[float, float]:
        ours = base = 0.0
        size = max(1, n // chunks)
        app = make_app(PsycopgConnector(conninfo=url))
        raw_conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        async with raw_conn, app.open_async():
            task = app.tasks[NOOP_ASYNC]
            await task.defer_async(i=-1)
            await raw.single_inserts_async(raw_conn, 1)
            for chunk in range(chunks):
                started = time.perf_counter()
                await raw.single_inserts_async(raw_conn, size)
                base += time.perf_counter() - started
                started = time.perf_counter()
                for i in range(chunk * size, (chunk + 1) * size):
                    await task.defer_async(i=i)
                ours += time.perf_counter() - started
        return ours, base

    return asyncio.run(run())


# -- batch defer ------------------------------------------------------------------------


def batch_defer(url: str, n: int) -> float:
    with _sync_psycopg(url) as app:
        task = app.tasks[NOOP_ASYNC]
        task.defer(i=-1)
        kwargs_list = [{"i": i} for i in range(n)]
        started = time.perf_counter()
        ids = task.batch_defer(*kwargs_list)
        elapsed = time.perf_counter() - started
    if len(ids) != n:
        raise RuntimeError(f"batch_defer returned {len(ids)} ids for {n} jobs")
    return elapsed


# -- worker drain -----------------------------------------------------------------------


def drain(url: str, expected: int, *, concurrency: int = 10) -> float:
    """Seconds for a worker to drain the bench queue (wait=False), checked afterwards."""

    async def run() -> float:
        app = make_app(PsycopgConnector(conninfo=url, max_size=concurrency + 2))
        async with app.open_async():
            started = time.perf_counter()
            await app.run_worker_async(
                queues=[QUEUE], concurrency=concurrency, wait=False, install_signal_handlers=False
            )
            return time.perf_counter() - started

    elapsed = asyncio.run(run())
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER "
            "(WHERE status IN ('todo', 'doing')) FROM procq_jobs WHERE queue = %s",
            (QUEUE,),
        ).fetchone()
    assert row is not None
    if row[1]:
        raise RuntimeError(f"the worker returned with {row[1]} jobs not done")
    if row[0] < expected:
        raise RuntimeError(f"only {row[0]} of {expected} jobs succeeded")
    return elapsed


# -- latency ----------------------------------------------------------------------------


def latency(url: str, samples: int, gap: float = 0.02) -> list[float]:
    """Milliseconds from defer() returning to the task body starting, idle worker."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    child = subprocess.Popen(
        [sys.executable, "-m", "bench._child", "latency", url],
        stdout=subprocess.PIPE,
        env=env,
    )
    returned: dict[int, int] = {}
    try:
        with _sync_psycopg(url) as app:
            task = app.tasks[LATENCY_TASK]
            _wait_worker_ready(url, task)
            for seq in range(samples):
                task.defer(seq=seq)
                returned[seq] = time.time_ns()
                time.sleep(gap)
            _wait_queue_empty(url)
    finally:
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=60)
    starts = {int(k): v for k, v in json.loads(out or b"{}").items()}
    missing = [seq for seq in returned if seq not in starts]
    if missing:
        raise RuntimeError(f"{len(missing)} latency probes never ran")
    return [(starts[seq] - returned[seq]) / 1e6 for seq in returned]


def _wait_worker_ready(url: str, task: Any, timeout: float = 30.0) -> None:
    """A warm-up probe that has run proves the worker is up and listening."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job_id = task.defer(seq=-1)
        for _ in range(50):
            time.sleep(0.02)
            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute("SELECT status FROM procq_jobs WHERE id = %s", (job_id,))
                status = row.fetchone()
            if status and status[0] == "succeeded":
                time.sleep(0.2)
                return
    raise RuntimeError("the latency worker did not start within 30 s")


def _wait_queue_empty(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM procq_jobs WHERE status IN ('todo', 'doing')"
            ).fetchone()
            if row and row[0] == 0:
                return
            time.sleep(0.05)


# -- memory -----------------------------------------------------------------------------


def rss(url: str, warmup_queue: str, queue: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run(
        [sys.executable, "-m", "bench._child", "rss", url, warmup_queue, queue],
        stdout=subprocess.PIPE,
        env=env,
        check=True,
        timeout=1800,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result
