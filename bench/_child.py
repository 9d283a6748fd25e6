"""Worker processes the bench measures from outside: latency and memory.

`python -m bench._child latency URL` runs an idle worker that notes when each probe
job's body starts (time.time_ns(), comparable with the parent's clock on the same
machine) and prints them as JSON when stopped by SIGTERM. `python -m bench._child rss URL
WARMUP_QUEUE QUEUE` drains a warm-up queue, then the measured queue, and prints the RSS
before and after (and the peak seen while draining).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import time
from typing import Any

import psutil  # type: ignore[import-untyped]

from procq_sqla import App, PsycopgConnector

LATENCY_QUEUE = "latency"
LATENCY_TASK = "bench.latency"


def latency(url: str) -> None:
    app = App(connector=PsycopgConnector(conninfo=url))
    starts: dict[int, int] = {}

    @app.task(name=LATENCY_TASK, queue=LATENCY_QUEUE)
    async def probe(seq: int) -> None:
        starts[seq] = time.time_ns()

    app.run_worker(queues=[LATENCY_QUEUE], concurrency=10, fetch_job_polling_interval=5.0)
    json.dump(starts, sys.stdout)


async def _rss(url: str, warmup_queue: str, queue: str) -> dict[str, Any]:
    from .common import NOOP_ASYNC

    app = App(connector=PsycopgConnector(conninfo=url))

    @app.task(name=NOOP_ASYNC)
    async def noop(i: int) -> None:
        return None

    process = psutil.Process()
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.1)

    options: dict[str, Any] = {"concurrency": 10, "wait": False, "install_signal_handlers": False}
    async with app.open_async():
        await app.run_worker_async(queues=[warmup_queue], **options)
        gc.collect()
        before = process.memory_info().rss
        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        await app.run_worker_async(queues=[queue], **options)
        elapsed = time.perf_counter() - started
        sampler.cancel()
        gc.collect()
        after = process.memory_info().rss
    return {"before": before, "after": after, "peak": max(peak, after), "seconds": elapsed}


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING)
    mode, url = argv[0], argv[1]
    if mode == "latency":
        latency(url)
    elif mode == "rss":
        json.dump(asyncio.run(_rss(url, argv[2], argv[3])), sys.stdout)
    else:
        raise SystemExit(f"unknown mode {mode!r}: expected latency or rss")


if __name__ == "__main__":
    main(sys.argv[1:])
