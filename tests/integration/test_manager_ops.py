"""The JobManager operations behind `procq jobs` and `procq healthchecks`, sync and
async, as application code uses them."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

from procq_sqla import App
from procq_sqla.exceptions import InvalidOption

Conn = psycopg.Connection[dict[str, Any]]


def insert_job(db: Conn, task: str = "t", **columns: Any) -> int:
    values = {"queue": "default", "task_name": task, "args": "{}", **columns}
    names, marks = ", ".join(values), ", ".join(["%s"] * len(values))
    row = db.execute(
        f"INSERT INTO procq_jobs ({names}) VALUES ({marks}) RETURNING id", list(values.values())
    ).fetchone()
    assert row is not None
    return int(row["id"])


def ids_left(db: Conn) -> list[int]:
    return [r["id"] for r in db.execute("SELECT id FROM procq_jobs ORDER BY id").fetchall()]


def test_list_jobs_filters_one_column_at_a_time(sync_app: App, db: Conn) -> None:
    a = insert_job(db, "x", queue="q1", lock="L", queueing_lock="Q")
    b = insert_job(db, "y", queue="q2", status="failed", finished_at="now()")
    c = insert_job(db, "x", queue="q1")
    manager = sync_app.job_manager

    def listed(**filters: Any) -> list[int]:
        return [job.id for job in manager.list_jobs(**filters)]

    assert listed() == [c, b, a]
    assert listed(queue="q1") == [c, a]
    assert listed(task_name="y") == [b]
    assert listed(status="failed") == [b]
    assert listed(lock="L") == [a]
    assert listed(queueing_lock="Q") == [a]
    assert listed(id=b) == [b]
    assert listed(limit=1) == [c]


def test_prune_deletes_old_finished_jobs_in_batches(sync_app: App, db: Conn) -> None:
    old = [insert_job(db, status=s) for s in ("succeeded", "failed", "cancelled", "aborted")]
    db.execute("UPDATE procq_jobs SET finished_at = now() - interval '2 hours'")
    recent = insert_job(db, status="succeeded", finished_at="now()")
    waiting = insert_job(db)
    assert sync_app.job_manager.prune(3600, statuses=["failed"]) == 1
    assert sync_app.job_manager.prune(3600, batch_size=2) == 3  # two batches of 2 + 1
    assert ids_left(db) == [recent, waiting]
    assert all(i not in ids_left(db) for i in old)


def test_prune_refuses_unfinished_statuses(sync_app: App) -> None:
    with pytest.raises(InvalidOption, match="only finished jobs"):
        sync_app.job_manager.prune(0, statuses=["todo"])
    with pytest.raises(InvalidOption, match="must not be negative"):
        sync_app.job_manager.prune(-1)


def test_queue_stats_counts_per_status(sync_app: App, db: Conn) -> None:
    insert_job(db, queue="a")
    insert_job(db, queue="a", status="doing")
    insert_job(db, queue="b", status="failed", finished_at="now()")
    insert_job(db, queue="b", scheduled_at="2999-01-01T00:00:00Z")  # not runnable yet
    stats = {q.queue: q for q in sync_app.job_manager.queue_stats()}
    assert stats["a"].counts == {
        "todo": 1,
        "doing": 1,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
        "aborted": 0,
    }
    assert stats["a"].oldest_waiting_age is not None and stats["a"].oldest_waiting_age >= 0
    assert (stats["b"].counts["failed"], stats["b"].counts["todo"]) == (1, 1)
    assert stats["b"].oldest_waiting_age is None


def test_health_reports_schema_workers_and_waiting(sync_app: App, db: Conn) -> None:
    db.execute("INSERT INTO procq_workers (name) VALUES ('w')")
    db.execute(
        "INSERT INTO procq_workers (name, last_heartbeat) VALUES ('old', now() - interval '1 hour')"
    )
    insert_job(db, created_at="2000-01-01T00:00:00Z")
    report = sync_app.job_manager.health(stalled_after=30)
    assert report.schema_at_head and report.head == "procq_0003"
    assert report.current_revisions == ["procq_0003"] and report.missing_revisions == []
    assert (report.workers_total, report.workers_alive) == (2, 1)
    assert report.oldest_waiting_age is not None and report.oldest_waiting_age > 86400
    assert report.server_version and report.database.startswith("procq_test_")


def test_health_on_a_database_without_schema(empty_db_url: str) -> None:
    from procq_sqla import SyncPsycopgConnector

    with App(connector=SyncPsycopgConnector(conninfo=empty_db_url)) as app:
        report = app.job_manager.health()
    assert not report.schema_present and not report.schema_at_head
    assert report.missing_revisions == ["procq_0001", "procq_0002", "procq_0003"]


def test_health_reads_an_applications_shared_version_table(sync_app: App, db: Conn) -> None:
    db.execute("ALTER TABLE procq_alembic_version RENAME TO alembic_version")
    db.execute("INSERT INTO alembic_version VALUES ('app_0042')")
    report = sync_app.job_manager.health()
    assert report.schema_at_head and report.current_revisions == ["procq_0003"]


async def test_async_twins_give_the_same_answers(async_app: App, db: Conn) -> None:
    insert_job(db, status="failed")
    db.execute("UPDATE procq_jobs SET finished_at = now() - interval '2 hours'")
    insert_job(db, queue="z")
    manager = async_app.job_manager
    report = await manager.health_async()
    assert report.schema_at_head and report.oldest_waiting_age is not None
    assert [q.queue for q in await manager.queue_stats_async()] == ["default", "z"]
    assert await manager.prune_async(3600) == 1
    assert [j.queue for j in await manager.list_jobs_async()] == ["z"]


def test_defer_logs_a_job_deferred_event(sync_app: App, caplog: pytest.LogCaptureFixture) -> None:
    @sync_app.task(name="logged", queue="lq")
    def logged() -> None: ...

    with caplog.at_level(logging.INFO, logger="procq_sqla.manager"):
        job_id = logged.defer()
        ids = logged.batch_defer({}, {})
    single, batch = [r for r in caplog.records if getattr(r, "event", "") == "job_deferred"]
    assert (single.job_id, single.task, single.queue) == (job_id, "logged", "lq")  # type: ignore[attr-defined]
    assert batch.job_ids == ids  # type: ignore[attr-defined]
