"""Rescue of the jobs of dead workers, run by every live worker after its heartbeat.

A worker that stops sending heartbeats for `stalled_worker_timeout` seconds (killed,
machine lost, cut off from the database) is forgotten, and the jobs it left in `doing`
go back to `todo`, or to `failed` when their task has no retry left. The attempt was
counted when the job was claimed (a job claimed ahead of a free slot, with no started_at,
is not known to have started: it goes back to `todo` and its attempt is not counted).
Each rescue is guarded by the dead worker's id, so a job claimed again meanwhile is
never touched.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .exceptions import AlreadyEnqueued
from .sql import queries

if TYPE_CHECKING:
    from .app import App
    from .connectors.base import AsyncConnector, Row

logger = logging.getLogger("procq_sqla.worker")


def rescue_statuses(app: App, rows: list[Row]) -> list[str]:
    """'todo' for each orphaned job whose task may run again, else 'failed' (pure).

    A task this app does not know is put back: a worker that knows it decides. So is a
    job claimed ahead (no started_at): as far as anyone knows, it never started."""
    statuses = []
    for row in rows:
        task = app.tasks.get(row["task_name"])
        strategy = task.retry_strategy if task is not None else None
        again = (
            task is None
            or row.get("started_at", True) is None
            or (strategy is not None and strategy.has_retries_left(row["attempts"]))
        )
        statuses.append("todo" if again else "failed")
    return statuses


async def rescue_stalled_jobs(
    app: App, connector: AsyncConnector, stalled_worker_timeout: float, worker_name: str
) -> int:
    """Forget dead workers and put their running jobs back; returns how many were."""
    pruned = await connector.fetch_all_async(
        queries["prune_stalled_workers"], {"seconds": stalled_worker_timeout}
    )
    for row in pruned:
        logger.warning(
            "worker %s (id %s) stopped sending heartbeats: declared dead",
            row["name"],
            row["id"],
            extra={"event": "worker_pruned", "worker": worker_name, "dead_worker": row["name"]},
        )
    rows = await connector.fetch_all_async(queries["list_orphaned_jobs"], {})
    if not rows:
        return 0
    params: dict[str, Any] = {
        "ids": [row["id"] for row in rows],
        "statuses": rescue_statuses(app, rows),
        "worker_ids": [row["worker_id"] for row in rows],
    }
    try:
        rescued = await connector.fetch_all_async(queries["rescue_jobs"], params)
    except AlreadyEnqueued:
        logger.debug("queueing-lock race while rescuing jobs; trying at the next heartbeat")
        return 0
    for row in rescued:
        logger.warning(
            "rescued job %s of a dead worker: now %s",
            row["id"],
            row["status"],
            extra={
                "event": "job_rescued",
                "job_id": row["id"],
                "status": row["status"],
                "worker": worker_name,
            },
        )
    return len(rescued)
