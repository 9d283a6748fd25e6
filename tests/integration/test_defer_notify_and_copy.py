"""Since procq_0002 the insert statements announce new jobs themselves (no trigger), and a
big batch without queueing lock goes in by COPY: every path must still NOTIFY, and the
COPY path must return exactly the ids of its rows, in input order."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
import pytest

from procq_sqla import AlreadyEnqueued, App, PsycopgConnector
from procq_sqla.manager import COPY_MIN_JOBS
from procq_sqla.sql import queries

Conn = psycopg.Connection[dict[str, Any]]


def listener(db_url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute("LISTEN procq_jobs")
    return conn


def notified(conn: psycopg.Connection[Any], timeout: float = 1.0) -> list[str]:
    return [n.payload for n in conn.notifies(timeout=timeout, stop_after=1)]


def test_defer_notifies_its_queue(sync_app: App, db_url: str) -> None:
    @sync_app.task(name="t", queue="mail")
    def t() -> None: ...

    with listener(db_url) as listen:
        t.defer()
        assert notified(listen) == ["mail"]


@pytest.mark.parametrize("size", [3, COPY_MIN_JOBS])
def test_batch_defer_notifies_once(sync_app: App, db_url: str, size: int) -> None:
    @sync_app.task(name="t", queue="bulk")
    def t(i: int) -> None: ...

    with listener(db_url) as listen:
        ids = t.batch_defer(*({"i": i} for i in range(size)))
        assert len(ids) == size
        assert notified(listen) == ["bulk"]
        assert notified(listen, timeout=0.2) == []  # one NOTIFY for the whole batch


def test_defer_in_a_session_notifies_only_at_commit(sync_app: App, db_url: str) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from procq_sqla.database import sqlalchemy_url

    @sync_app.task(name="t", queue="session")
    def t() -> None: ...

    engine = create_engine(sqlalchemy_url(db_url, "psycopg"))
    try:
        with listener(db_url) as listen, Session(engine) as session:
            with session.begin():
                t.configure(session=session).defer()
                assert notified(listen, timeout=0.3) == []
            assert notified(listen) == ["session"]
    finally:
        engine.dispose()


def test_periodic_defers_notify_each_queue(db_url: str, db: Conn) -> None:
    params = {
        "task_names": ["a", "b"],
        "periodic_ids": ["", ""],
        "timestamps": [1, 1],
        "queues": ["q1", "q2"],
        "args": [json.dumps({"timestamp": 1})] * 2,
        "priorities": [0, 0],
        "locks": [None, None],
        "queueing_locks": [None, None],
    }
    with listener(db_url) as listen:
        rows = db.execute(queries["defer_periodic_jobs"], params).fetchall()
        assert sorted(r["task_name"] for r in rows) == ["a", "b"]
        payloads = [n.payload for n in listen.notifies(timeout=1.0, stop_after=2)]
    assert sorted(payloads) == ["q1", "q2"]


def test_big_batch_by_copy_keeps_ids_in_input_order_with_every_option(
    sync_app: App, db: Conn
) -> None:
    @sync_app.task(name="t")
    def t(i: int, text: str) -> None: ...

    when = dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    tricky = 'tab\there\nnew line \\ back\\slash "quoted" é ✓ \r end'
    kwargs = [{"i": i, "text": f"{tricky} {i}"} for i in range(COPY_MIN_JOBS + 7)]
    ids = t.configure(queue="copy", priority=-4, lock="L\t1", schedule_at=when).batch_defer(*kwargs)

    assert ids == sorted(ids) and len(set(ids)) == len(kwargs)
    rows = db.execute(
        "SELECT id, queue, task_name, args, priority, lock, queueing_lock, scheduled_at, status"
        " FROM procq_jobs ORDER BY id"
    ).fetchall()
    assert [r["id"] for r in rows] == ids
    assert [r["args"] for r in rows] == kwargs
    assert {
        (r["queue"], r["task_name"], r["priority"], r["lock"], r["scheduled_at"], r["status"])
        for r in rows
    } == {("copy", "t", -4, "L\t1", when, "todo")}
    assert all(r["queueing_lock"] is None for r in rows)


def test_copy_read_back_skips_rows_other_transactions_put_in_its_id_range(
    db_url: str, db: Conn
) -> None:
    """The ids of a COPY are read back by range and xmin: a job another session inserted
    between the id drawn first and the COPY is in the range but not ours."""
    with psycopg.connect(db_url) as conn:  # one transaction, as the connectors run it
        after_id = conn.execute(queries["copy_jobs_start"]).fetchone()[0]  # type: ignore[index]
        other = db.execute(
            "INSERT INTO procq_jobs (task_name) VALUES ('other') RETURNING id"
        ).fetchone()
        assert other is not None and other["id"] > after_id
        with conn.cursor() as cur, cur.copy(queries["copy_jobs"]) as copy:
            for i in range(3):
                copy.write(f'default\tmine\t{{"i": {i}}}\t0\t\\N\t\\N\n')
        rows = conn.execute(
            queries["copy_jobs_ids"], {"queue": "default", "after_id": after_id}
        ).fetchall()
        mine = [r[0] for r in rows]
    assert len(mine) == 3 and other["id"] not in mine
    assert min(mine) > other["id"]
    names = db.execute("SELECT task_name FROM procq_jobs WHERE id = ANY(%s)", (mine,)).fetchall()
    assert {r["task_name"] for r in names} == {"mine"}


def test_big_batch_with_a_queueing_lock_still_skips_or_raises(sync_app: App, db: Conn) -> None:
    @sync_app.task(name="t", queueing_lock="only-one")
    def t(i: int) -> None: ...

    kwargs = [{"i": i} for i in range(COPY_MIN_JOBS)]
    assert len(t.batch_defer(*kwargs, ignore_already_enqueued=True)) == 1
    with pytest.raises(AlreadyEnqueued):
        t.batch_defer(*kwargs)
    assert db.execute("SELECT count(*) AS n FROM procq_jobs").fetchone()["n"] == 1


def test_big_batch_with_a_bad_argument_writes_nothing(
    sync_app: App, db: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from procq_sqla import JobArgumentsError
    from procq_sqla.jobs import BatchArgs

    monkeypatch.setattr(BatchArgs, "CHUNK", 100)  # chunks before the bad one are sent

    @sync_app.task(name="t")
    def t(i: Any) -> None: ...

    kwargs: list[dict[str, Any]] = [{"i": i} for i in range(COPY_MIN_JOBS)]
    kwargs[950] = {"i": {1, 2}}
    with pytest.raises(JobArgumentsError, match="argument 'i' cannot be stored as JSON"):
        t.batch_defer(*kwargs)
    assert db.execute("SELECT count(*) AS n FROM procq_jobs").fetchone()["n"] == 0


async def test_big_async_batch_by_copy_returns_ids_in_order(db_url: str, db: Conn) -> None:
    app = App(connector=PsycopgConnector(conninfo=db_url))

    @app.task(name="t", queue="async-bulk")
    async def t(i: int) -> None: ...

    async with app.open_async():
        ids = await t.batch_defer_async(*({"i": i} for i in range(COPY_MIN_JOBS + 1)))
    rows = db.execute("SELECT id, args FROM procq_jobs ORDER BY id").fetchall()
    assert [r["id"] for r in rows] == ids
    assert [r["args"]["i"] for r in rows] == list(range(COPY_MIN_JOBS + 1))
