"""The worker runs async and sync tasks, wakes on NOTIFY, retries, and stops gracefully."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from procq_sqla import App, JobContext, RetryStrategy
from procq_sqla.testing import running_worker


def status_of(db: Any, job_id: int) -> dict[str, Any]:
    row: dict[str, Any] = db.execute("SELECT * FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    return row


async def drain(app: App, **options: Any) -> None:
    await app.run_worker_async(wait=False, install_signal_handlers=False, **options)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def test_async_and_sync_tasks_both_run(async_app: App, db: Any) -> None:
    seen: list[tuple[str, int, str]] = []

    @async_app.task(name="a")
    async def a(x: int) -> None:
        seen.append(("a", x, threading.current_thread().name))

    @async_app.task(name="s")
    def s(x: int) -> None:
        seen.append(("s", x, threading.current_thread().name))

    ids = [await a.defer_async(x=1), await s.defer_async(x=2)]
    await drain(async_app, concurrency=2)

    assert sorted((name, x) for name, x, _ in seen) == [("a", 1), ("s", 2)]
    threads = {name: thread for name, _, thread in seen}
    assert threads["a"] == "MainThread"
    assert threads["s"].startswith("procq-job")  # sync tasks never block the loop
    for job_id in ids:
        row = status_of(db, job_id)
        assert (row["status"], row["attempts"]) == ("succeeded", 1)
        assert row["started_at"] <= row["finished_at"]
        assert row["worker_id"] is None


async def test_notify_wakes_an_idle_worker_well_under_the_polling_interval(
    async_app: App, db: Any
) -> None:
    done = asyncio.Event()

    @async_app.task(name="ping")
    async def ping() -> None:
        done.set()

    async with running_worker(async_app, fetch_job_polling_interval=30.0):
        await asyncio.sleep(0.3)  # the worker is idle, waiting on NOTIFY
        started = time.monotonic()
        await ping.defer_async()
        await asyncio.wait_for(done.wait(), 5)
        elapsed = time.monotonic() - started

    assert elapsed < 1.0, f"woken after {elapsed:.3f} s; polling interval is 30 s"


async def test_retries_count_attempts_and_keep_the_error(async_app: App, db: Any) -> None:
    calls = {"flaky": 0}

    @async_app.task(name="flaky", retry=3)
    async def flaky() -> None:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ValueError(f"flaky failure {calls['flaky']}")

    @async_app.task(name="doomed", retry=RetryStrategy(max_attempts=1))
    def doomed() -> None:
        raise RuntimeError("always broken")

    flaky_id = await flaky.defer_async()
    doomed_id = await doomed.defer_async()
    await drain(async_app)

    flaky_row = status_of(db, flaky_id)
    assert (flaky_row["status"], flaky_row["attempts"]) == ("succeeded", 3)
    assert "ValueError: flaky failure 2" in flaky_row["last_error"]
    doomed_row = status_of(db, doomed_id)
    assert (doomed_row["status"], doomed_row["attempts"]) == ("failed", 2)
    assert "RuntimeError: always broken" in doomed_row["last_error"]
    assert doomed_row["finished_at"] is not None


async def test_retry_waits_are_scheduled(async_app: App, db: Any) -> None:
    @async_app.task(name="later", retry=RetryStrategy(max_attempts=2, wait=60))
    async def later() -> None:
        raise ValueError("not yet")

    job_id = await later.defer_async()
    await drain(async_app)

    row = status_of(db, job_id)
    assert (row["status"], row["attempts"]) == ("todo", 1)
    delay = db.execute(
        "SELECT extract(epoch FROM scheduled_at - now()) AS s FROM procq_jobs WHERE id = %s",
        (job_id,),
    ).fetchone()["s"]
    assert 50 < float(delay) <= 60


async def test_graceful_shutdown_finishes_the_running_job(async_app: App, db: Any) -> None:
    started = asyncio.Event()

    @async_app.task(name="slow")
    async def slow() -> None:
        started.set()
        await asyncio.sleep(0.5)

    async with running_worker(async_app):
        job_id = await slow.defer_async()
        await asyncio.wait_for(started.wait(), 5)
        # leaving the block calls worker.stop(), as SIGTERM does: stop claiming, let it finish

    row = status_of(db, job_id)
    assert row["status"] == "succeeded"
    assert db.execute("SELECT count(*) AS n FROM procq_workers").fetchone()["n"] == 0


async def test_shutdown_timeout_returns_the_unfinished_job_for_retry(
    async_app: App, db: Any
) -> None:
    started = asyncio.Event()

    @async_app.task(name="endless")
    async def endless() -> None:
        started.set()
        await asyncio.sleep(60)

    async with running_worker(async_app, shutdown_graceful_timeout=0.2):
        job_id = await endless.defer_async()
        await asyncio.wait_for(started.wait(), 5)

    row = status_of(db, job_id)
    assert row["status"] == "todo"
    assert "shut down" in row["last_error"]


async def test_unknown_task_fails_on_the_row_and_the_worker_goes_on(
    async_app: App, db: Any
) -> None:
    @async_app.task(name="known")
    async def known() -> None: ...

    unknown_id = db.execute(
        "INSERT INTO procq_jobs (task_name) VALUES ('nobody.knows') RETURNING id"
    ).fetchone()["id"]
    known_id = await known.defer_async()
    await drain(async_app)

    unknown = status_of(db, unknown_id)
    assert unknown["status"] == "failed"
    assert "unknown task 'nobody.knows'" in unknown["last_error"]
    assert status_of(db, known_id)["status"] == "succeeded"


async def test_pass_context_gives_the_job_and_worker(async_app: App, db: Any) -> None:
    seen: list[JobContext] = []

    @async_app.task(name="ctx", pass_context=True)
    async def ctx(context: JobContext, n: int) -> None:
        seen.append(context)

    job_id = await ctx.defer_async(n=7)
    await drain(async_app, name="worker-under-test")

    (context,) = seen
    assert context.job.id == job_id
    assert context.job.args == {"n": 7}
    assert context.job.attempts == 1
    assert context.worker_name == "worker-under-test"
    assert context.should_abort() is False


async def test_queues_restrict_what_a_worker_claims(async_app: App, db: Any) -> None:
    @async_app.task(name="q")
    async def q() -> None: ...

    mine = await q.configure(queue="mine").defer_async()
    other = await q.configure(queue="other").defer_async()
    await drain(async_app, queues=["mine"])

    assert status_of(db, mine)["status"] == "succeeded"
    assert status_of(db, other)["status"] == "todo"


def test_run_worker_from_sync_code_drains(sync_app: App, db_url: str, db: Any) -> None:
    from procq_sqla import PsycopgConnector

    worker_app = sync_app.with_connector(PsycopgConnector(conninfo=db_url))

    @sync_app.task(name="hello")
    def hello(who: str) -> str:
        return f"hello {who}"

    job_id = hello.defer(who="world")
    worker_app.run_worker(wait=False, install_signal_handlers=False)

    assert status_of(db, job_id)["status"] == "succeeded"


def test_tasks_can_defer_from_inside_the_worker_of_a_sqlalchemy_app(db_url: str, db: Any) -> None:
    from procq_sqla import SQLAlchemyPsycopg2Connector
    from procq_sqla.database import sqlalchemy_url

    app = App(connector=SQLAlchemyPsycopg2Connector(dsn=sqlalchemy_url(db_url, "psycopg2")))

    @app.task(name="child")
    def child(n: int) -> None: ...

    @app.task(name="parent")
    def parent(n: int) -> None:
        child.defer(n=n + 1)  # the worker opened the app's own connector for this

    with app.open():
        parent.defer(n=1)
    app.run_worker(wait=False, install_signal_handlers=False)  # app not open here

    rows = db.execute("SELECT task_name, status, args FROM procq_jobs ORDER BY id").fetchall()
    assert [(r["task_name"], r["status"], r["args"]["n"]) for r in rows] == [
        ("parent", "succeeded", 1),
        ("child", "succeeded", 2),
    ]


async def test_worker_waits_for_a_database_refusing_connections_at_start(
    db_url: str, db: Any, caplog: Any
) -> None:
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    from psycopg import sql

    from procq_sqla import PsycopgConnector
    from procq_sqla.privileges import grant_statements

    role = f"procq_full_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 0").format(sql.Identifier(role)))
    for statement in grant_statements(role, "worker"):
        db.execute(statement)
    parts = urlsplit(db_url)
    role_url = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname or ''}"))
    app = App(connector=PsycopgConnector(conninfo=role_url))

    @app.task(name="hello")
    async def hello() -> None: ...

    db.execute("INSERT INTO procq_jobs (task_name) VALUES ('hello')")
    worker = asyncio.create_task(app.run_worker_async(wait=False, install_signal_handlers=False))
    await asyncio.sleep(1.0)  # the role may not connect yet: the worker must wait, not exit
    assert not worker.done()
    db.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT -1").format(sql.Identifier(role)))
    await asyncio.wait_for(worker, 30)

    assert db.execute("SELECT status FROM procq_jobs").fetchone()["status"] == "succeeded"
    assert "database not reachable yet" in caplog.text
