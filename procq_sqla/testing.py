"""Helpers for tests that need a real worker running beside them (ours and yours).

`running_worker` starts a worker as a task of the current event loop, waits until it
has registered, and stops it gracefully on exit, failing loudly if it does not stop.
It polls every 0.2 s by default, so a test never depends on NOTIFY timing alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .worker import Worker

if TYPE_CHECKING:
    from .app import App


@contextlib.asynccontextmanager
async def running_worker(
    app: App, *, stop_timeout: float = 15.0, **options: Any
) -> AsyncIterator[Worker]:
    """`async with running_worker(app, concurrency=2) as worker: ...` (app open for asyncio)."""
    options.setdefault("fetch_job_polling_interval", 0.2)
    options.setdefault("install_signal_handlers", False)
    worker = Worker(app, app.async_connector(), **options)
    task = asyncio.create_task(worker.run())
    while worker.worker_id is None and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        task.result()  # the worker failed to start: raise its error here
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, stop_timeout)
