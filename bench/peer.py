"""procrastinate's figures beside ours, when it is installed (it never has to be).

Measured on its own database on the same server, with its own schema, through its
public API: single defers (sync and async), batch defer, and its worker draining no-op
async jobs at concurrency 10. One run each, after ours and not interleaved with a
baseline: an indication beside our figures, not a ratio.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from procq_sqla.database import with_dbname

from .common import Sizes


def available() -> bool:
    return importlib.util.find_spec("procrastinate") is not None


def _create_db(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    return with_dbname(server_url, name)


def _drop_db(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def run(server_url: str, name: str, sizes: Sizes, log: Callable[[str], None]) -> dict[str, float]:
    """One run of each peer workload; figures keyed by our workload names."""
    import procrastinate  # type: ignore[import-not-found]  # optional peer

    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    url = _create_db(server_url, name)
    try:
        return asyncio.run(_run(procrastinate, url, sizes, log))
    finally:
        _drop_db(server_url, name)


async def _run(
    procrastinate: Any, url: str, sizes: Sizes, log: Callable[[str], None]
) -> dict[str, float]:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop", queue="bench")  # type: ignore[untyped-decorator]
    async def noop(i: int) -> None:
        return None

    figures: dict[str, float] = {}
    # The peer is slow (hundreds of jobs/s through its worker): smaller sizes, same rates.
    defers, drain = min(sizes.defers, 500), min(sizes.drain, 2_000)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        figures["defer_sync_psycopg"] = await asyncio.to_thread(_sync_defers, url, defers)
        log(f"procrastinate sync defer: {figures['defer_sync_psycopg']:,.0f}/s")
        started = time.perf_counter()
        for i in range(defers):
            await noop.defer_async(i=i)
        figures["defer_async"] = defers / (time.perf_counter() - started)
        log(f"procrastinate defer_async: {figures['defer_async']:,.0f}/s")
        await _truncate(url)
        started = time.perf_counter()
        await noop.batch_defer_async(*({"i": i} for i in range(sizes.batch)))
        figures["batch_defer"] = sizes.batch / (time.perf_counter() - started)
        log(f"procrastinate batch_defer: {figures['batch_defer']:,.0f}/s")
        await _truncate(url)
        await noop.batch_defer_async(*({"i": i} for i in range(drain)))
        started = time.perf_counter()
        await app.run_worker_async(
            queues=["bench"], concurrency=10, wait=False, install_signal_handlers=False
        )
        figures["drain_async"] = drain / (time.perf_counter() - started)
        log(f"procrastinate drain: {figures['drain_async']:,.0f}/s")
    return figures


def _sync_defers(url: str, n: int) -> float:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=url))

    @app.task(name="noop", queue="bench")  # type: ignore[untyped-decorator]
    def noop(i: int) -> None:
        return None

    with app.open():
        noop.defer(i=-1)
        started = time.perf_counter()
        for i in range(n):
            noop.defer(i=i)
        return n / (time.perf_counter() - started)


async def _truncate(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("TRUNCATE procrastinate_jobs CASCADE")
