"""Deferring writes exactly the expected rows, through sync and async connectors."""

from __future__ import annotations

import datetime as dt

import pytest

from procq_sqla import App, JobArgumentsError


def test_defer_writes_expected_row(sync_app: App, db) -> None:
    @sync_app.task(queue="emails", priority=3, name="send")
    def send(to: str) -> None: ...

    job_id = send.defer(to="a@example.org")

    row = db.execute("SELECT * FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row["task_name"] == "send"
    assert row["queue"] == "emails"
    assert row["priority"] == 3
    assert row["args"] == {"to": "a@example.org"}
    assert row["status"] == "todo"
    assert row["attempts"] == 0
    assert row["scheduled_at"] is None


def test_configure_overrides_every_option(sync_app: App, db) -> None:
    @sync_app.task(name="t")
    def t() -> None: ...

    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    job_id = t.configure(
        queue="urgent", priority=5, lock="user:1", queueing_lock="q:1", schedule_at=when
    ).defer()

    row = db.execute("SELECT * FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert (row["queue"], row["priority"], row["lock"], row["queueing_lock"]) == (
        "urgent",
        5,
        "user:1",
        "q:1",
    )
    assert row["scheduled_at"] == when


def test_batch_defer_returns_ids_in_order(sync_app: App, db) -> None:
    @sync_app.task(name="t")
    def t(n: int) -> None: ...

    ids = t.batch_defer(*({"n": i} for i in range(50)))

    rows = db.execute("SELECT id, args FROM procq_jobs ORDER BY id").fetchall()
    assert [r["id"] for r in rows] == ids
    assert [r["args"]["n"] for r in rows] == list(range(50))


async def test_defer_async_writes_row(async_app: App, db) -> None:
    @async_app.task(name="t")
    async def t(x: int) -> None: ...

    job_id = await t.defer_async(x=1)
    ids = await t.batch_defer_async({"x": 2}, {"x": 3})

    rows = db.execute("SELECT id, args FROM procq_jobs ORDER BY id").fetchall()
    assert [r["id"] for r in rows] == [job_id, *ids]
    assert [r["args"]["x"] for r in rows] == [1, 2, 3]


def test_non_json_argument_is_named_and_nothing_inserted(sync_app: App, db) -> None:
    @sync_app.task(name="t")
    def t(**kwargs: object) -> None: ...

    with pytest.raises(JobArgumentsError, match="argument 'when'"):
        t.defer(ok=1, when=dt.datetime.now())
    assert db.execute("SELECT count(*) AS n FROM procq_jobs").fetchone()["n"] == 0
