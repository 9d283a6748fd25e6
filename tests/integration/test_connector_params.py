"""Connection parameters three ways for every connector, pool options and external pools,
`with_connector`, sync `defer()` on async apps, and bad input (no password ever shown).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiopg
import psycopg
import psycopg2
import psycopg2.pool
import psycopg_pool
import pytest
from hba import EDITS_PG_HBA, role_with_password
from polling import count_jobs

from procq_sqla import (
    AiopgConnector,
    App,
    ConnectorError,
    Psycopg2Connector,
    PsycopgConnector,
    SyncPsycopgConnector,
)
from procq_sqla.database import conninfo_kwargs, database_url

ASYNC_KINDS = ["psycopg", "aiopg"]
SYNC_KINDS = ["sync_psycopg", "psycopg2"]
FORMS = ["env", "dsn", "keywords"]
SECRET = "S3cret-Pw-4711"


def make(kind: str, form: str, url: str, **extra: Any) -> Any:
    """A connector of `kind` given its parameters as libpq variables, a DSN or keywords."""
    keywords = conninfo_kwargs(url) if form == "keywords" else {}
    if kind in ("psycopg", "sync_psycopg"):
        cls = PsycopgConnector if kind == "psycopg" else SyncPsycopgConnector
        if form == "dsn":
            return cls(conninfo=url, **extra)
        return cls(kwargs=keywords, **extra) if form == "keywords" else cls(**extra)
    cls2 = AiopgConnector if kind == "aiopg" else Psycopg2Connector
    if form == "dsn":
        return cls2(dsn=url, **extra)
    return cls2(**keywords, **extra) if form == "keywords" else cls2(**extra)


def set_libpq_env(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE"}
    for key, value in conninfo_kwargs(url).items():
        if key in names:
            monkeypatch.setenv(names[key], str(value))
    if "PGPORT" not in {names[k] for k in conninfo_kwargs(url) if k in names}:
        monkeypatch.delenv("PGPORT", raising=False)


# -- three ways to give parameters ---------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_sync_connector_takes_parameters_three_ways(
    kind: str, form: str, db_url: str, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if form == "env":
        set_libpq_env(monkeypatch, db_url)
    app = App(connector=make(kind, form, db_url))

    @app.task(name="t")
    def t(n: int) -> None: ...

    with app.open():
        job_id = t.defer(n=1)
        assert app.job_manager.get_job(job_id).args == {"n": 1}
    assert count_jobs(db) == 1


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_async_connector_takes_parameters_three_ways_worker_included(
    kind: str, form: str, db_url: str, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if form == "env":
        set_libpq_env(monkeypatch, db_url)
    app = App(connector=make(kind, form, db_url))

    @app.task(name="t")
    def t(n: int) -> None: ...

    async with app.open_async():
        await t.defer_async(n=1)
        await asyncio.to_thread(t.defer, n=2)  # the blocking twin, same parameters
        await app.run_worker_async(wait=False, install_signal_handlers=False)
    assert count_jobs(db, "succeeded") == 2


# -- pool options, unknown keywords ----------------------------------------------------------


async def test_other_keywords_go_to_the_pool(db_url: str) -> None:
    psycopg_app = App(connector=PsycopgConnector(conninfo=db_url, min_size=2, max_size=3))
    async with psycopg_app.open_async():
        pool = psycopg_app.connector.pool  # type: ignore[union-attr]
        assert (pool.min_size, pool.max_size) == (2, 3)
    aiopg_app = App(connector=AiopgConnector(dsn=db_url, minsize=2, maxsize=3))
    async with aiopg_app.open_async():
        apool = aiopg_app.connector.pool  # type: ignore[union-attr]
        assert (apool.minsize, apool.maxsize, apool.size) == (2, 3, 2)
    sync_app = App(connector=SyncPsycopgConnector(conninfo=db_url, max_size=4))
    with sync_app.open():
        assert sync_app.connector.pool.max_size == 4  # type: ignore[union-attr]
    p2_app = App(connector=Psycopg2Connector(dsn=db_url, minconn=2, maxconn=5))
    with p2_app.open():
        p2pool = p2_app.connector.pool  # type: ignore[union-attr]
        assert (p2pool.minconn, p2pool.maxconn, len(p2pool._pool)) == (2, 5, 2)


UNKNOWN_KEYWORDS: list[tuple[str, Callable[[str], Any], type[BaseException], str]] = [
    ("psycopg pool", lambda u: PsycopgConnector(conninfo=u, max_sise=3), TypeError, "max_sise"),
    (
        "psycopg connection",
        lambda u: PsycopgConnector(conninfo=u, kwargs={"hots": "x"}),
        psycopg.ProgrammingError,
        "hots",
    ),
    (
        "sync psycopg pool",
        lambda u: SyncPsycopgConnector(conninfo=u, max_sise=3),
        TypeError,
        "max_sise",
    ),
    ("psycopg2", lambda u: Psycopg2Connector(dsn=u, hots="x"), psycopg2.ProgrammingError, "hots"),
    ("aiopg", lambda u: AiopgConnector(dsn=u, hots="x"), psycopg2.ProgrammingError, "hots"),
]


@pytest.mark.parametrize(
    ("make_connector", "cause", "word"),
    [case[1:] for case in UNKNOWN_KEYWORDS],
    ids=[case[0] for case in UNKNOWN_KEYWORDS],
)
async def test_unknown_keyword_fails_at_open_with_the_drivers_words(
    make_connector: Callable[[str], Any], cause: type[BaseException], word: str, db_url: str
) -> None:
    app = App(connector=make_connector(db_url))
    with pytest.raises(ConnectorError) as raised:
        if hasattr(app.connector, "open_async"):
            await app.open_async()
        else:
            app.open()
    assert isinstance(raised.value.__cause__, cause)
    assert word in str(raised.value)


# -- a null pool (PgBouncer) runs everything, worker included ------------------------------


async def test_null_pool_factory_defers_and_runs_the_worker(db_url: str, db: Any) -> None:
    connector = PsycopgConnector(pool_factory=psycopg_pool.AsyncNullConnectionPool, conninfo=db_url)
    app = App(connector=connector)

    @app.task(name="child")
    def child() -> None: ...

    @app.task(name="parent")
    def parent() -> None:
        child.defer()

    async with app.open_async():
        assert isinstance(connector.pool, psycopg_pool.AsyncNullConnectionPool)
        await parent.defer_async()
        await app.run_worker_async(wait=False, install_signal_handlers=False)
        twin = connector.get_sync_connector()
        assert isinstance(twin.pool, psycopg_pool.NullConnectionPool)
    rows = db.execute("SELECT task_name, status FROM procq_jobs ORDER BY id").fetchall()
    assert [(r["task_name"], r["status"]) for r in rows] == [
        ("parent", "succeeded"),
        ("child", "succeeded"),
    ]


# -- pools handed to open(): used, never closed ----------------------------------------------


def test_sync_apps_use_a_given_pool_and_leave_it_open(db_url: str, db: Any) -> None:
    psycopg_pool_ = psycopg_pool.ConnectionPool(db_url, min_size=1, max_size=2, open=True)
    p2_pool = psycopg2.pool.ThreadedConnectionPool(1, 2, dsn=db_url)  # not autocommit
    try:
        for connector, pool in (
            (SyncPsycopgConnector(), psycopg_pool_),
            (Psycopg2Connector(), p2_pool),
        ):
            app = App(connector=connector)

            @app.task(name="t")
            def t() -> None: ...

            with app.open(pool):
                assert connector.pool is pool
                t.defer()
                t.batch_defer({}, {})
        assert count_jobs(db) == 6  # committed although the psycopg2 pool is not autocommit
        with psycopg_pool_.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        conn2 = p2_pool.getconn()
        assert not p2_pool.closed and conn2.closed == 0
        p2_pool.putconn(conn2)
    finally:
        psycopg_pool_.close()
        p2_pool.closeall()


async def test_async_apps_use_a_given_pool_and_leave_it_open(db_url: str, db: Any) -> None:
    given_psycopg = psycopg_pool.AsyncConnectionPool(db_url, min_size=1, max_size=3, open=False)
    await given_psycopg.open()
    given_aiopg = await aiopg.create_pool(db_url, minsize=1, maxsize=3)
    try:
        for connector, pool in (
            (PsycopgConnector(), given_psycopg),
            (AiopgConnector(), given_aiopg),
        ):
            app = App(connector=connector)

            @app.task(name="t")
            def t() -> None: ...

            async with app.open_async(pool):
                assert connector.pool is pool
                await t.defer_async()
                await asyncio.to_thread(t.defer)  # twin built from the pool's parameters
                await app.run_worker_async(wait=False, install_signal_handlers=False)
        assert count_jobs(db, "succeeded") == 4
        assert not given_psycopg.closed and not given_aiopg.closed
        async with given_psycopg.connection() as conn:
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        async with given_aiopg.acquire() as aconn, aconn.cursor() as cur:
            await cur.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
    finally:
        await given_psycopg.close()
        given_aiopg.close()
        await given_aiopg.wait_closed()


# -- with_connector: defer through one, work through another ---------------------------------


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_with_connector_shares_tasks_web_defers_worker_runs(
    kind: str, db_url: str, db: Any
) -> None:
    web = App(connector=Psycopg2Connector(dsn=db_url))

    @web.task(name="from_web")
    def from_web() -> None: ...

    worker_app = web.with_connector(make(kind, "dsn", db_url))

    @worker_app.task(name="from_worker")
    def from_worker() -> None: ...

    assert set(web.tasks) == set(worker_app.tasks) == {"from_web", "from_worker"}
    assert worker_app.get_task("from_web") is from_web
    with web.open():
        from_web.defer()
    async with worker_app.open_async():
        await web.get_task("from_worker").defer_async()  # a task defers through its own app
        await worker_app.run_worker_async(wait=False, install_signal_handlers=False)
    rows = db.execute("SELECT task_name, status FROM procq_jobs ORDER BY id").fetchall()
    assert [(r["task_name"], r["status"]) for r in rows] == [
        ("from_web", "succeeded"),
        ("from_worker", "succeeded"),
    ]


APP_MODULE = """
    import sys
    from procq_sqla import AiopgConnector, App, Psycopg2Connector, PsycopgConnector

    DSN = {dsn!r}
    app = App(connector=Psycopg2Connector(dsn=DSN))

    @app.task(name="hello")
    def hello(who: str) -> None:
        print("hello", who)

    if __name__ == "__main__":
        if sys.argv[1] == "defer":
            with app.open():
                print(hello.defer(who="web"))
        elif sys.argv[2] == "aiopg":
            app.with_connector(AiopgConnector(dsn=DSN)).run_worker(wait=False)
        else:
            app.with_connector(PsycopgConnector(conninfo=DSN)).run_worker(wait=False)
"""


@pytest.mark.parametrize("kind", ASYNC_KINDS)
def test_documented_web_and_worker_processes(
    kind: str, db_url: str, db: Any, tmp_path: Path
) -> None:
    script = tmp_path / "tasks_app.py"
    script.write_text(textwrap.dedent(APP_MODULE.format(dsn=db_url)))

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    job_id = int(run("defer").strip())
    assert "hello web" in run("worker", kind)
    row = db.execute("SELECT status FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row["status"] == "succeeded"


# -- sync defer() on an app whose connector is async ----------------------------------------


@pytest.fixture
def no_event_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to spin up an event loop while this is active fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a sync defer() created an event loop")

    monkeypatch.setattr(asyncio, "new_event_loop", refuse)
    monkeypatch.setattr(asyncio, "run", refuse)


@pytest.mark.parametrize("kind", ASYNC_KINDS)
def test_sync_defer_on_async_app_from_many_threads(
    kind: str, db_url: str, db: Any, no_event_loops: None
) -> None:
    app = App(connector=make(kind, "dsn", db_url))

    @app.task(name="t")
    def t(thread: int, n: int) -> None: ...

    start = threading.Barrier(8)

    def work(thread: int) -> list[int]:
        start.wait()
        return [t.defer(thread=thread, n=n) for n in range(25)]

    with app.open(), ThreadPoolExecutor(8) as pool:
        ids = [i for chunk in pool.map(work, range(8)) for i in chunk]
    assert len(set(ids)) == 200
    assert count_jobs(db) == 200


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_sync_defer_from_inside_a_sync_task_in_the_worker(
    kind: str, db_url: str, db: Any
) -> None:
    app = App(connector=make(kind, "dsn", db_url))

    @app.task(name="child")
    def child(n: int) -> None: ...

    @app.task(name="parent")
    def parent(n: int) -> None:
        child.defer(n=n)
        child.batch_defer({"n": n + 100})

    async with app.open_async():
        await parent.batch_defer_async(*({"n": n} for n in range(4)))
        await app.run_worker_async(concurrency=4, wait=False, install_signal_handlers=False)
    rows = db.execute("SELECT task_name, status, args FROM procq_jobs").fetchall()
    assert len(rows) == 12
    assert {r["status"] for r in rows} == {"succeeded"}
    children = sorted(r["args"]["n"] for r in rows if r["task_name"] == "child")
    assert children == [0, 1, 2, 3, 100, 101, 102, 103]


# -- bad input: a ConnectorError caused by the driver, never showing the password ------------

UNREACHABLE_URL = f"postgresql://procq:{SECRET}@127.0.0.1:1/procq?connect_timeout=1"
UNREACHABLE_KW = {
    "host": "127.0.0.1",
    "port": 1,
    "user": "procq",
    "password": SECRET,
    "dbname": "procq",
    "connect_timeout": 1,
}
BAD_DSNS = [
    f"host=/tmp user=procq password={SECRET} dbname",  # missing '='
    f"postgresql://procq:{SECRET}@localhost:notaport/procq",
    f"host=/tmp password='{SECRET}",  # unterminated quote
]
BAD_INPUTS: list[tuple[str, Callable[[], Any], type[BaseException]]] = [
    ("psycopg-unreachable-dsn", lambda: PsycopgConnector(conninfo=UNREACHABLE_URL), psycopg.Error),
    (
        "psycopg-unreachable-kwargs",
        lambda: PsycopgConnector(kwargs=UNREACHABLE_KW),
        psycopg.Error,
    ),
    (
        "sync-psycopg-unreachable",
        lambda: SyncPsycopgConnector(conninfo=UNREACHABLE_URL),
        psycopg.Error,
    ),
    ("psycopg2-unreachable-dsn", lambda: Psycopg2Connector(dsn=UNREACHABLE_URL), psycopg2.Error),
    ("psycopg2-unreachable-kw", lambda: Psycopg2Connector(**UNREACHABLE_KW), psycopg2.Error),
    ("aiopg-unreachable-dsn", lambda: AiopgConnector(dsn=UNREACHABLE_URL), psycopg2.Error),
    ("aiopg-unreachable-kw", lambda: AiopgConnector(**UNREACHABLE_KW), psycopg2.Error),
    *(
        (f"psycopg-bad-dsn-{i}", (lambda d=d: PsycopgConnector(conninfo=d)), psycopg.Error)
        for i, d in enumerate(BAD_DSNS)
    ),
    *(
        (f"sync-psycopg-bad-dsn-{i}", (lambda d=d: SyncPsycopgConnector(conninfo=d)), psycopg.Error)
        for i, d in enumerate(BAD_DSNS)
    ),
    *(
        (f"psycopg2-bad-dsn-{i}", (lambda d=d: Psycopg2Connector(dsn=d)), psycopg2.Error)
        for i, d in enumerate(BAD_DSNS)
    ),
    *(
        (f"aiopg-bad-dsn-{i}", (lambda d=d: AiopgConnector(dsn=d)), psycopg2.Error)
        for i, d in enumerate(BAD_DSNS)
    ),
]


@pytest.mark.parametrize(
    ("make_connector", "cause"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
async def test_unusable_parameters_raise_connector_error_without_password(
    make_connector: Callable[[], Any],
    cause: type[BaseException],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    connector = make_connector()
    app = App(connector=connector)
    with pytest.raises(ConnectorError) as raised:
        if hasattr(connector, "open_async"):
            await app.open_async()
        else:
            app.open()
    assert isinstance(raised.value.__cause__, cause)
    assert str(raised.value).startswith("cannot connect to PostgreSQL (")
    shown = [str(raised.value), repr(raised.value), repr(connector), repr(app), caplog.text]
    for text in shown:
        assert SECRET not in text
    if hasattr(connector, "get_sync_connector"):
        assert SECRET not in repr(connector.get_sync_connector())


# -- a wrong password (needs a role that must give one: a pg_hba.conf line, then restored) ---


@pytest.fixture
def password_role(db: Any) -> Iterator[str]:
    """A login role that must authenticate with a password, on the test server only."""
    with role_with_password(db, database_url(), "the-right-one") as role:
        yield role


WRONG_PASSWORD_KINDS = [*SYNC_KINDS, *ASYNC_KINDS]


@EDITS_PG_HBA
@pytest.mark.parametrize("form", ["dsn", "keywords"])
@pytest.mark.parametrize("kind", WRONG_PASSWORD_KINDS)
async def test_wrong_password_is_connector_error_without_the_password(
    kind: str,
    form: str,
    db_url: str,
    password_role: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    params = {**conninfo_kwargs(db_url), "user": password_role, "password": SECRET}
    url = psycopg.conninfo.make_conninfo("", **params)
    connector = make(kind, form, url) if form == "dsn" else make_with_keywords(kind, params)
    app = App(connector=connector)
    with pytest.raises(ConnectorError) as raised:
        if hasattr(connector, "open_async"):
            await app.open_async()
        else:
            app.open()
    assert isinstance(raised.value.__cause__, (psycopg.Error, psycopg2.Error))
    assert "password authentication failed" in str(raised.value)
    for text in (str(raised.value), repr(raised.value), repr(connector), caplog.text):
        assert SECRET not in text


def make_with_keywords(kind: str, params: dict[str, Any]) -> Any:
    if kind in ("psycopg", "sync_psycopg"):
        cls = PsycopgConnector if kind == "psycopg" else SyncPsycopgConnector
        return cls(kwargs=params)
    return (AiopgConnector if kind == "aiopg" else Psycopg2Connector)(**params)


@EDITS_PG_HBA
@pytest.mark.parametrize("source", ["PGPASSWORD", "pgpass file"])
@pytest.mark.parametrize("kind", WRONG_PASSWORD_KINDS)
async def test_password_from_libpq_environment(
    kind: str,
    source: str,
    db_url: str,
    db: Any,
    password_role: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {password_role}")
    db.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {password_role}")
    set_libpq_env(monkeypatch, db_url)
    monkeypatch.setenv("PGUSER", password_role)
    if source == "PGPASSWORD":
        monkeypatch.setenv("PGPASSWORD", "the-right-one")
    else:
        pgpass = tmp_path / "pgpass"
        pgpass.write_text(f"*:*:*:{password_role}:the-right-one\n")
        pgpass.chmod(0o600)
        monkeypatch.setenv("PGPASSFILE", str(pgpass))
    app = App(connector=make(kind, "env", db_url))

    @app.task(name="t")
    def t() -> None: ...

    if kind in ASYNC_KINDS:
        async with app.open_async():
            await t.defer_async()
            await app.run_worker_async(wait=False, install_signal_handlers=False)
        assert count_jobs(db, "succeeded") == 1
    else:
        with app.open():
            t.defer()
        assert count_jobs(db, "todo") == 1


def test_psycopg2_callers_wait_for_a_free_connection_instead_of_pool_exhausted(
    db_url: str, db: Any
) -> None:
    app = App(connector=Psycopg2Connector(dsn=db_url, minconn=1, maxconn=2, timeout=30))

    @app.task(name="t")
    def t(n: int) -> None: ...

    with app.open(), ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda n: t.defer(n=n), range(160)))
    assert len(set(ids)) == 160
    assert count_jobs(db) == 160
