"""Claiming ahead: short jobs are claimed many per statement; jobs claimed ahead never
sit in a busy worker while another could start them, and stop or abort hand them back."""

from __future__ import annotations

import asyncio
import sys
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from polling import eventually, wait_until

from procq_sqla import App, JobContext
from procq_sqla.testing import running_worker


@dataclass
class HeldLine:
    """20 quick jobs (the worker learns they are short), a `hold` job that runs until
    `release` is set, then `later` quick jobs claimed ahead behind it."""

    ran: list[int]
    release: Any  # asyncio.Event for an async `hold`, threading.Event for a def one
    later: list[int]


async def line_behind_a_hold(app: App, later: int, *, sync: bool = False) -> HeldLine:
    ran: list[int] = []
    if sync:
        release: Any = threading.Event()

        @app.task(name="quick")
        def quick(i: int) -> None:
            ran.append(i)

        @app.task(name="hold")
        def hold() -> None:
            release.wait(10)

    else:
        release = asyncio.Event()

        @app.task(name="quick")
        async def quick(i: int) -> None:
            ran.append(i)

        @app.task(name="hold")
        async def hold() -> None:
            await release.wait()

    await app.tasks["quick"].batch_defer_async(*({"i": i} for i in range(20)))
    await app.tasks["hold"].defer_async()
    ids = await app.tasks["quick"].batch_defer_async(*({"i": i} for i in range(20, 20 + later)))
    return HeldLine(ran, release, ids)


@pytest.mark.parametrize("claim_ahead", [True, False], ids=["claim-ahead", "free-slots-only"])
async def test_short_jobs_are_claimed_many_per_statement(
    async_app: App, db: Any, claim_ahead: bool
) -> None:
    held_ahead: list[int] = []

    @async_app.task(name="quick")
    async def quick(i: int) -> None:
        if i % 50 == 25:  # how many jobs does the worker hold without having started them?
            doing = await async_app.job_manager.list_jobs_async(status="doing", limit=1000)
            held_ahead.append(sum(1 for job in doing if job.started_at is None))

    await quick.batch_defer_async(*({"i": i} for i in range(400)))
    async with running_worker(async_app, concurrency=2, claim_ahead=claim_ahead):
        done = "SELECT count(*) FROM procq_jobs WHERE status = 'succeeded'"
        assert await wait_until(db, done, 400) == 400
    # claiming only its 2 free slots, the worker starts every job it claims at once
    if claim_ahead:
        assert max(held_ahead) > 20, held_ahead
    else:
        assert held_ahead == [0] * 8, held_ahead
    row = db.execute(
        "SELECT max(attempts) AS attempts, count(*) FILTER (WHERE started_at IS NULL"
        " OR started_at > finished_at OR started_at < created_at) AS bad FROM procq_jobs"
    ).fetchone()
    assert row == {"attempts": 1, "bad": 0}  # every job got a start time in order


async def test_jobs_claimed_ahead_go_back_when_a_long_job_holds_the_slot(
    async_app: App, db: Any
) -> None:
    ran_by: dict[str, int | None] = {}

    @async_app.task(name="quick")
    async def quick(i: int) -> None:
        return None

    @async_app.task(name="slow", pass_context=True)
    async def slow(context: JobContext, name: str) -> None:
        ran_by[name] = context.worker_id
        await asyncio.sleep(1.0)

    await quick.batch_defer_async(*({"i": i} for i in range(30)))
    await slow.batch_defer_async({"name": "s1"}, {"name": "s2"}, {"name": "s3"})
    slow_todo = (
        "SELECT count(*) FROM procq_jobs WHERE task_name = 'slow' AND status = 'todo' "
        "AND attempts = 0 AND worker_id IS NULL AND started_at IS NULL"
    )
    async with running_worker(async_app, concurrency=1) as first:
        # the quick jobs taught the worker to claim ahead: it took the slow ones too,
        # then gave back the two it could not start
        running = "SELECT count(*) FROM procq_jobs WHERE task_name = 'slow' AND status = 'doing'"
        assert await wait_until(db, running, 1) == 1
        assert await wait_until(db, slow_todo, 2, timeout=0.8) == 2
        async with running_worker(async_app, concurrency=1) as second:
            done = "SELECT count(*) FROM procq_jobs WHERE status = 'succeeded'"
            assert await wait_until(db, done, 33) == 33
    assert set(ran_by) == {"s1", "s2", "s3"}
    assert {first.worker_id, second.worker_id} == set(ran_by.values())
    attempts = db.execute("SELECT DISTINCT attempts FROM procq_jobs").fetchall()
    assert [r["attempts"] for r in attempts] == [1]


async def test_stopping_gives_back_jobs_claimed_ahead(async_app: App, db: Any) -> None:
    line = await line_behind_a_hold(async_app, 20)
    async with running_worker(async_app, concurrency=1) as worker:
        worker.give_back_after = 60.0  # only the stop may give them back
        held = "SELECT count(*) FROM procq_jobs WHERE task_name = 'hold' AND status = 'doing'"
        assert await wait_until(db, held, 1) == 1
        claimed_ahead = (
            "SELECT count(*) FROM procq_jobs WHERE task_name = 'quick' AND status = 'doing'"
        )
        assert await wait_until(db, claimed_ahead, 20) == 20
        worker.stop()
        waiting = "SELECT count(*) FROM procq_jobs WHERE status = 'todo' AND attempts = 0"
        assert await wait_until(db, waiting, 20) == 20  # back while `hold` still runs
        line.release.set()
    rows = db.execute(
        "SELECT status, count(*) AS n FROM procq_jobs GROUP BY status ORDER BY status"
    ).fetchall()
    assert {r["status"]: r["n"] for r in rows} == {"succeeded": 21, "todo": 20}


async def test_def_jobs_never_started_when_the_grace_period_ends_go_back_uncounted(
    async_app: App, db: Any
) -> None:
    line = await line_behind_a_hold(async_app, 10, sync=True)
    async with running_worker(async_app, concurrency=1, shutdown_graceful_timeout=0.3) as worker:
        worker.give_back_after = 60.0  # the 10 stay in the thread run behind `hold`
        held = "SELECT count(*) FROM procq_jobs WHERE task_name = 'hold' AND status = 'doing'"
        assert await wait_until(db, held, 1) == 1
        # all claimed; the quick ones that ran before `hold` in its run report with it
        claimed = "SELECT count(*) FROM procq_jobs WHERE status IN ('doing', 'succeeded')"
        assert await wait_until(db, claimed, 31) == 31
        # the first 20 ran: the thread is now in `hold`
        assert await eventually(lambda: len(line.ran) == 20)
    line.release.set()  # the interrupted thread may now end
    rows = db.execute(
        "SELECT task_name, status, attempts, worker_id IS NULL AS free, count(*) AS n "
        "FROM procq_jobs WHERE id > 20 GROUP BY 1, 2, 3, 4 ORDER BY 1"
    ).fetchall()
    assert [(r["task_name"], r["status"], r["attempts"], r["free"], r["n"]) for r in rows] == [
        ("hold", "todo", 1, True, 1),  # interrupted: its attempt counts
        ("quick", "todo", 0, True, 10),  # never started: as if never claimed
    ]
    assert sorted(line.ran) == list(range(20))


async def test_abort_of_a_job_claimed_ahead_means_it_never_starts(async_app: App, db: Any) -> None:
    line = await line_behind_a_hold(async_app, 5)
    ran, later = line.ran, line.later
    async with running_worker(async_app, concurrency=1) as worker:
        worker.give_back_after = 60.0
        doing = "SELECT count(*) FROM procq_jobs WHERE status = 'doing'"
        assert await wait_until(db, doing, 6) == 6  # `hold` runs, 5 wait in the worker
        assert await async_app.job_manager.abort_async(later[2]) is True
        aborted = "SELECT count(*) FROM procq_jobs WHERE status = 'aborted'"
        assert await wait_until(db, aborted, 1) == 1
        line.release.set()
        done = "SELECT count(*) FROM procq_jobs WHERE status = 'succeeded'"
        assert await wait_until(db, done, 25) == 25
    assert 22 not in ran
    assert sorted(ran) == [i for i in range(25) if i != 22]
    row = db.execute("SELECT * FROM procq_jobs WHERE id = %s", (later[2],)).fetchone()
    assert row["last_error"] == "aborted on request before it started"


async def test_def_jobs_claimed_ahead_run_in_priority_order(async_app: App, db: Any) -> None:
    ran: list[int] = []

    @async_app.task(name="step")
    def step(i: int) -> None:
        ran.append(i)

    for i in range(120):
        await step.configure(priority=i % 3).defer_async(i=i)
    async with running_worker(async_app, concurrency=1):
        done = "SELECT count(*) FROM procq_jobs WHERE status = 'succeeded'"
        assert await wait_until(db, done, 120) == 120
    assert ran == sorted(range(120), key=lambda i: (-(i % 3), i))


async def test_a_long_def_job_hands_back_the_jobs_queued_behind_it(async_app: App, db: Any) -> None:
    release = threading.Event()
    ran_by: dict[int, int | None] = {}

    @async_app.task(name="quick", pass_context=True)
    def quick(context: JobContext, i: int) -> None:
        ran_by[i] = context.worker_id

    @async_app.task(name="hold")
    def hold() -> None:
        release.wait(10)

    await quick.batch_defer_async(*({"i": i} for i in range(40)))
    await hold.defer_async()
    await quick.batch_defer_async(*({"i": i} for i in range(40, 60)))
    async with running_worker(async_app, concurrency=1) as first:
        held = "SELECT count(*) FROM procq_jobs WHERE task_name = 'hold' AND status = 'doing'"
        assert await wait_until(db, held, 1) == 1
        async with running_worker(async_app, concurrency=1) as second:
            later = "SELECT count(*) FROM procq_jobs WHERE status = 'succeeded' AND id > 41"
            # the second worker runs all 20 while `hold` keeps the first one busy
            assert await wait_until(db, later, 20) == 20
            release.set()
            done = "SELECT count(*) FROM procq_jobs WHERE status = 'succeeded'"
            assert await wait_until(db, done, 61) == 61
    assert {ran_by[i] for i in range(40, 60)} == {second.worker_id}
    assert first.worker_id != second.worker_id


async def test_abort_of_a_def_job_waiting_behind_another_in_its_thread(
    async_app: App, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    line = await line_behind_a_hold(async_app, 20, sync=True)
    ran, later = line.ran, line.later
    async with running_worker(async_app, concurrency=1) as worker:
        worker.give_back_after = 60.0  # keep them in this worker
        held = "SELECT count(*) FROM procq_jobs WHERE task_name = 'hold' AND status = 'doing'"
        assert await wait_until(db, held, 1) == 1
        assert await async_app.job_manager.abort_async(later[0]) is True
        seen = await eventually(lambda: f"aborting job {later[0]} on request" in caplog.text, 5)
        assert seen, "the worker never saw the abort request"
        line.release.set()
        done = "SELECT count(*) FROM procq_jobs WHERE status IN ('succeeded', 'aborted')"
        assert await wait_until(db, done, 41) == 41
    assert 20 not in ran and len(ran) == 39
    row = db.execute("SELECT status FROM procq_jobs WHERE id = %s", (later[0],)).fetchone()
    assert row["status"] == "aborted"


async def test_a_def_task_calling_sys_exit_fails_only_its_own_job(async_app: App, db: Any) -> None:
    @async_app.task(name="leave")
    def leave(i: int) -> None:
        if i == 3:
            sys.exit(2)

    await leave.batch_defer_async(*({"i": i} for i in range(8)))
    async with running_worker(async_app, concurrency=2):
        done = "SELECT count(*) FROM procq_jobs WHERE status IN ('succeeded', 'failed')"
        assert await wait_until(db, done, 8) == 8
    rows = db.execute(
        "SELECT args->>'i' AS i, status, last_error FROM procq_jobs WHERE status = 'failed'"
    ).fetchall()
    assert [(r["i"], r["status"]) for r in rows] == [("3", "failed")]
    assert "SystemExit: 2" in rows[0]["last_error"]


async def test_a_worker_declared_dead_drops_the_jobs_it_claimed_ahead(
    async_app: App, db: Any
) -> None:
    line = await line_behind_a_hold(async_app, 5)
    ran = line.ran
    options = {"concurrency": 1, "heartbeat_interval": 0.2, "stalled_worker_timeout": 1.0}
    async with running_worker(async_app, **options) as worker:
        worker.give_back_after = 60.0
        doing = "SELECT count(*) FROM procq_jobs WHERE status = 'doing'"
        assert await wait_until(db, doing, 6) == 6  # `hold` runs, 5 wait in the worker
        # `hold` was claimed ahead too: it gets its started_at once it has run a while
        marked = (
            "SELECT count(*) FROM procq_jobs WHERE task_name = 'hold' AND started_at > '-infinity'"
        )
        assert await wait_until(db, marked, 1) == 1
        first_id = worker.worker_id
        db.execute("DELETE FROM procq_workers WHERE id = %s", (first_id,))
        # the heartbeat finds the worker gone: it registers again and rescues the jobs
        # of its former self, which the new registration then claims and runs once each
        while worker.worker_id == first_id:
            await asyncio.sleep(0.05)
        line.release.set()  # the slot is free again (the outcome of `hold` is ignored)
        done = "SELECT count(*) FROM procq_jobs WHERE status = 'succeeded'"
        assert await wait_until(db, done, 25) == 25
    assert sorted(ran) == list(range(25)), "no job claimed ahead ran twice"
    rows = db.execute(
        "SELECT task_name, status, attempts, last_error FROM procq_jobs WHERE id > 21"
        " OR task_name = 'hold' ORDER BY id"
    ).fetchall()
    # `hold` had started: with no retries it fails; the five claimed ahead never had
    hold_row, *ahead = rows
    assert (hold_row["status"], hold_row["attempts"]) == ("failed", 1)
    assert hold_row["last_error"] == f"worker {first_id} died while running this job"
    assert [(r["status"], r["attempts"]) for r in ahead] == [("succeeded", 1)] * 5
    assert {r["last_error"] for r in ahead} == {
        f"worker {first_id} died before this job claimed ahead was known to start"
    }


async def test_a_job_given_back_defers_to_a_newer_one_of_its_queueing_lock(
    async_app: App, db: Any
) -> None:
    line = await line_behind_a_hold(async_app, 3)
    quick = async_app.tasks["quick"]
    ahead = await quick.configure(queueing_lock="q").defer_async(i=100)
    async with running_worker(async_app, concurrency=1) as worker:
        worker.give_back_after = 60.0  # only the stop gives them back
        doing = "SELECT count(*) FROM procq_jobs WHERE status = 'doing'"
        assert await wait_until(db, doing, 5) == 5  # `hold` runs, 4 wait in the worker
        newer = await quick.configure(queueing_lock="q").defer_async(i=101)  # allowed
        worker.stop()
        back = "SELECT count(*) FROM procq_jobs WHERE status = 'todo'"
        assert await wait_until(db, back, 4) == 4  # 3 given back, and the newer one
        line.release.set()
    rows = {
        r["id"]: r for r in db.execute("SELECT id, status, attempts, last_error FROM procq_jobs")
    }
    assert (rows[ahead]["status"], rows[ahead]["attempts"]) == ("cancelled", 0)
    assert rows[ahead]["last_error"] == (
        "not run: another job with the same queueing lock is waiting"
    )
    assert (rows[newer]["status"], rows[newer]["attempts"]) == ("todo", 0)
    assert [rows[i]["attempts"] for i in line.later] == [0, 0, 0]
    assert 100 not in line.ran and 101 not in line.ran
