"""No password shows anywhere: logs (captured at DEBUG, every logger), exception messages,
reprs, CLI output (text and JSON logs) and `healthchecks`, for every connector and every
way of giving the password (DSN as URL or key=value, keyword, SQLAlchemy URL object,
PGPASSWORD). The jobs really run with that password: the role may not log in without it.

Failing connections (unreachable, malformed DSN, wrong password) are covered in
tests/integration/test_connector_params.py and tests/unit/test_connectors_secrets.py;
here the connection works and the password rides along through normal operation, errors
raised while open, killed connections, a worker run and the command line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import sqlalchemy as sa
from hba import EDITS_PG_HBA, role_with_password

from procq_sqla import (
    AiopgConnector,
    AlreadyEnqueued,
    App,
    Psycopg2Connector,
    PsycopgConnector,
    SyncPsycopgConnector,
)
from procq_sqla.contrib.sqlalchemy import SQLAlchemyPsycopg2Connector
from procq_sqla.database import conninfo_kwargs
from procq_sqla.exceptions import JobNotFound, ProcqError

SECRET = "Zq9-s3cr3t@pw;x"
ENCODED = quote(SECRET, safe="")
ACCEPTANCE = Path(__file__).parents[1] / "acceptance"

pytestmark = EDITS_PG_HBA


@pytest.fixture(scope="module")
def secret_role(server_url: str) -> Iterator[str]:
    """A superuser role that must log in with SECRET."""
    with (
        psycopg.connect(server_url, autocommit=True) as admin,
        role_with_password(admin, server_url, SECRET, superuser=True) as role,
    ):
        yield role


def role_params(db_url: str, role: str) -> dict[str, Any]:
    return {**conninfo_kwargs(db_url), "user": role, "password": SECRET}


def role_url(db_url: str, role: str, *, password: bool = True) -> str:
    params = conninfo_kwargs(db_url)
    auth = f"{role}:{ENCODED}" if password else role
    return f"postgresql://{auth}@/{params['dbname']}?host={quote(str(params['host']))}"


def role_keyvalue(db_url: str, role: str) -> str:
    params = role_params(db_url, role)
    return psycopg.conninfo.make_conninfo("", **params)


def make_connector(kind: str, form: str, db_url: str, role: str) -> Any:
    """A connector of `kind` given the password as `form`."""
    url, params = role_url(db_url, role), role_params(db_url, role)
    if form == "env":  # PGPASSWORD carries it; the URL has none
        url = role_url(db_url, role, password=False)
        params.pop("password")
    if kind in ("psycopg", "sync_psycopg"):
        cls = PsycopgConnector if kind == "psycopg" else SyncPsycopgConnector
        if form == "keyvalue":
            return cls(conninfo=role_keyvalue(db_url, role))
        return cls(kwargs=params) if form == "keywords" else cls(conninfo=url)
    if kind in ("psycopg2", "aiopg"):
        cls2 = Psycopg2Connector if kind == "psycopg2" else AiopgConnector
        if form == "keyvalue":
            return cls2(dsn=role_keyvalue(db_url, role))
        return cls2(**params) if form == "keywords" else cls2(dsn=url)
    assert kind == "sqlalchemy"
    return SQLAlchemyPsycopg2Connector(dsn=url)


CASES = [
    (kind, form)
    for kind in ("psycopg", "sync_psycopg", "psycopg2", "aiopg", "sqlalchemy")
    for form in ("url", "keyvalue", "keywords", "env")
    if not (kind == "sqlalchemy" and form in ("keyvalue", "keywords"))
]


def assert_hidden(texts: list[str], role: str | None = None, masked: bool = True) -> None:
    joined = "\n".join(texts)
    assert len(joined) > 200  # something was captured
    if role is not None:  # the connection parameters were shown, the password masked
        assert role in joined
        assert "***" in joined or not masked
    for needle in (SECRET, ENCODED, SECRET.split("@")[0]):
        assert needle not in joined


def kill_connections(db: Any, role: str) -> None:
    db.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
        " WHERE usename = %s AND pid <> pg_backend_pid()",
        (role,),
    )


def exercise_sync(app: App, db: Any, role: str, shown: list[str]) -> None:
    """Defers, reads, meets errors and killed connections; collects what would be seen."""
    task = app.get_task("t")
    task.defer(n=1)
    task.configure(queueing_lock="one").defer(n=2)
    try:
        task.configure(queueing_lock="one").defer(n=3)
    except AlreadyEnqueued as exc:
        shown += [str(exc), repr(exc)]
    kill_connections(db, role)
    task.defer(n=4)  # on a fresh connection, after the dead ones are noticed
    try:
        app.job_manager.get_job(10**12)
    except JobNotFound as exc:
        shown += [str(exc), repr(exc)]
    shown += [repr(app.job_manager.health()), repr(app.job_manager.list_jobs())]
    shown += [repr(app), repr(app.connector)]


async def exercise_async(app: App, db: Any, role: str, shown: list[str]) -> None:
    """The same through the asyncio API."""
    task = app.get_task("t")
    await task.defer_async(n=1)
    await task.configure(queueing_lock="one").defer_async(n=2)
    try:
        await task.configure(queueing_lock="one").defer_async(n=3)
    except AlreadyEnqueued as exc:
        shown += [str(exc), repr(exc)]
    kill_connections(db, role)
    await task.defer_async(n=4)
    shown += [repr(app), repr(app.connector), repr(app.async_connector())]
    shown.append(repr(app.async_connector().get_sync_connector()))


@pytest.mark.parametrize(("kind", "form"), CASES, ids=[f"{k}-{f}" for k, f in CASES])
async def test_no_password_in_logs_errors_or_reprs(
    kind: str,
    form: str,
    db_url: str,
    db: Any,
    secret_role: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    if form == "env":
        monkeypatch.setenv("PGPASSWORD", SECRET)
    app = App(connector=make_connector(kind, form, db_url, secret_role))
    shown: list[str] = []
    attempts: list[int] = []

    @app.task(name="t", retry=1)
    async def t(n: int) -> None:
        attempts.append(n)
        if attempts.count(n) == 1 and n == 4:
            raise RuntimeError(f"task failed on purpose, connector {app.connector!r}")

    if kind in ("psycopg", "aiopg"):
        async with app.open_async():
            await exercise_async(app, db, secret_role, shown)
            await app.run_worker_async(wait=False, install_signal_handlers=False)
    else:
        await asyncio.to_thread(sync_run, app, db, secret_role, shown)
        if kind == "sqlalchemy":  # the paired async connector runs the worker
            with app.open():
                await app.run_worker_async(wait=False, install_signal_handlers=False)
    shown.append(caplog.text)
    statuses = db.execute("SELECT status, count(*) AS n FROM procq_jobs GROUP BY status")
    counts = {r["status"]: r["n"] for r in statuses.fetchall()}
    if kind in ("sync_psycopg", "psycopg2"):  # defer only: the jobs wait
        assert counts == {"todo": 3}
    else:
        assert counts == {"succeeded": 3}
        assert attempts.count(4) == 2  # the failure (and its logged error) happened
        assert "task failed on purpose" in caplog.text
    assert_hidden(shown, secret_role, masked=form != "env")


def sync_run(app: App, db: Any, role: str, shown: list[str]) -> None:
    with app.open():
        exercise_sync(app, db, role, shown)


async def test_no_password_with_a_sqlalchemy_url_object_engine(
    db_url: str, db: Any, secret_role: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    params = conninfo_kwargs(db_url)
    url = sa.engine.URL.create(
        "postgresql+psycopg2",
        username=secret_role,
        password=SECRET,
        database=params["dbname"],
        query={"host": str(params["host"])},
    )
    engine = sa.create_engine(url)
    app = App(connector=SQLAlchemyPsycopg2Connector())
    shown: list[str] = []

    @app.task(name="t")
    async def t(n: int) -> None: ...

    try:
        with app.open(engine):
            t.defer(n=1)
            try:
                t.configure(queueing_lock="q").batch_defer({"n": 2}, {"n": 3})
            except ProcqError as exc:
                shown += [str(exc), repr(exc)]
            worker_connector = app.connector.get_worker_connector()  # type: ignore[attr-defined]
            shown += [repr(app), repr(worker_connector), repr(app.connector)]
            await app.run_worker_async(wait=False, install_signal_handlers=False)
    finally:
        engine.dispose()
    shown.append(caplog.text)
    done = db.execute("SELECT count(*) AS n FROM procq_jobs WHERE status = 'succeeded'")
    assert done.fetchone()["n"] >= 1
    assert_hidden(shown)


# -- the command line ------------------------------------------------------------------------


def run_procq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PROCQ_", "PG"))}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ACCEPTANCE), base.get("PYTHONPATH")]))
    base["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "procq_sqla", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


CLI_RUNS: list[tuple[str, ...]] = [
    ("-vv", "--log-format", "json", "--app", "cli_app:app", "defer", "add", '{"a": 1, "b": 2}'),
    ("-vv", "--app", "cli_app:app", "defer", "fail"),
    ("-vv", "--log-format", "json", "--app", "cli_app:app", "worker", "--one-shot"),
    ("-v", "--app", "cli_app:app", "worker", "--one-shot"),
    ("-vv", "healthchecks"),
    ("healthchecks", "--json"),
    ("jobs", "list", "--json"),
    ("-vv", "jobs", "list"),
    ("jobs", "queues"),
    ("migrate", "--check"),
    ("--app", "cli_app:app", "jobs", "show", "1"),
]


@pytest.mark.parametrize("given_as", ["url", "PGPASSWORD"])
def test_no_password_in_cli_output_and_logs(
    db_url: str, db: Any, secret_role: str, given_as: str
) -> None:
    if given_as == "url":
        env = {"PROCQ_DATABASE_URL": role_url(db_url, secret_role)}
    else:
        url = role_url(db_url, secret_role, password=False)
        env = {"PROCQ_DATABASE_URL": url, "PGPASSWORD": SECRET}
    outputs = []
    for args in CLI_RUNS:
        result = run_procq(*args, env=env)
        assert result.returncode == 0, (args, result.stderr)
        outputs += [result.stdout, result.stderr]
    statuses = db.execute("SELECT status FROM procq_jobs ORDER BY id").fetchall()
    assert [r["status"] for r in statuses] == ["succeeded", "failed"]
    assert '"event": "job_failed"' in "".join(outputs)  # the JSON logs were captured
    assert_hidden(outputs)


@pytest.mark.parametrize(
    "args",
    [
        ("healthchecks",),
        ("healthchecks", "--json"),
        ("jobs", "list"),
        ("-v", "jobs", "list"),
        ("migrate", "--check"),
        ("-v", "--app", "cli_app:app", "defer", "add", "{}"),
        ("--log-format", "json", "--app", "cli_app:app", "worker", "--one-shot"),
    ],
)
def test_no_password_when_the_cli_cannot_log_in(
    db_url: str, secret_role: str, args: tuple[str, ...]
) -> None:
    params = conninfo_kwargs(db_url)
    wrong = SECRET[::-1]
    url = (
        f"postgresql://{secret_role}:{quote(wrong, safe='')}@/{params['dbname']}"
        f"?host={quote(str(params['host']))}"
    )
    result = run_procq(*args, env={"PROCQ_DATABASE_URL": url})
    assert result.returncode == 1, result
    output = result.stdout + result.stderr
    assert "password authentication failed" in output
    for needle in (wrong, quote(wrong, safe=""), SECRET):
        assert needle not in output
