"""Bad input gets one clear sentence and leaves nothing half-written."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from polling import count_jobs

from procq_sqla import (
    App,
    AppNotOpen,
    ConnectorError,
    PsycopgConnector,
    SchemaMissing,
    SyncPsycopgConnector,
    WrongConnector,
)
from procq_sqla.exceptions import InvalidOption


def test_missing_schema_says_how_to_migrate(empty_db_url: str) -> None:
    app = App(connector=SyncPsycopgConnector(conninfo=empty_db_url))

    @app.task(name="t")
    def t() -> None: ...

    with app.open(), pytest.raises(SchemaMissing, match=r"alembic upgrade head.*procq migrate"):
        t.defer()


async def test_worker_on_missing_schema_stops_with_the_same_advice(empty_db_url: str) -> None:
    app = App(connector=PsycopgConnector(conninfo=empty_db_url))
    with pytest.raises(SchemaMissing, match="procq migrate"):
        await app.run_worker_async(wait=False, install_signal_handlers=False)


def test_defer_before_open_says_to_call_open(db_url: str) -> None:
    app = App(connector=SyncPsycopgConnector(conninfo=db_url))

    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(AppNotOpen, match=r"open\(\)"):
        t.defer()


async def test_defer_async_before_open_async_says_so(db_url: str) -> None:
    app = App(connector=PsycopgConnector(conninfo=db_url))

    @app.task(name="t")
    async def t() -> None: ...

    with pytest.raises(AppNotOpen, match="open_async"):
        await t.defer_async()


def test_sync_connector_cannot_run_the_worker(db_url: str) -> None:
    app = App(connector=SyncPsycopgConnector(conninfo=db_url))
    with pytest.raises(WrongConnector, match="PsycopgConnector"):
        app.run_worker(wait=False)


async def test_sync_connector_cannot_defer_async(sync_app: App, db: Any) -> None:
    @sync_app.task(name="t")
    def t() -> None: ...

    with pytest.raises(WrongConnector, match="PsycopgConnector"):
        await t.defer_async()
    assert count_jobs(db) == 0


def test_naive_schedule_at_asks_for_a_timezone(sync_app: App, db: Any) -> None:
    @sync_app.task(name="t")
    def t() -> None: ...

    with pytest.raises(InvalidOption, match="timezone-aware"):
        t.configure(schedule_at=dt.datetime(2030, 1, 1)).defer()
    assert count_jobs(db) == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue": ""}, "queue must be a non-empty string"),
        ({"priority": "high"}, "priority must be an integer"),
        ({"priority": 2**40}, "32-bit"),
        ({"lock": "x" * 5000}, "limit is 1024"),
        ({"schedule_in": {"fortnights": 1}}, "timedelta keywords"),
    ],
)
def test_bad_options_are_refused_before_any_write(
    sync_app: App, db: Any, options: dict[str, Any], message: str
) -> None:
    @sync_app.task(name="t")
    def t() -> None: ...

    with pytest.raises(InvalidOption, match=message):
        t.configure(**options).defer()
    assert count_jobs(db) == 0


def test_arguments_with_nul_or_nan_are_refused(sync_app: App, db: Any) -> None:
    from procq_sqla import JobArgumentsError

    @sync_app.task(name="t")
    def t(**kwargs: Any) -> None: ...

    with pytest.raises(JobArgumentsError, match="argument 'ratio'"):
        t.defer(ratio=float("nan"))
    with pytest.raises(JobArgumentsError, match="NUL"):
        t.defer(text="a\x00b")
    with pytest.raises(JobArgumentsError, match="argument 'blob'"):
        t.batch_defer({"blob": 1}, {"blob": b"bytes"})
    assert count_jobs(db) == 0


def test_unreachable_database_is_a_connector_error_without_the_password() -> None:
    secret = "s3cr3t-Pa55"
    connector = SyncPsycopgConnector(
        conninfo=f"postgresql://bob:{secret}@127.0.0.1:1/db?connect_timeout=1", timeout=2
    )
    app = App(connector=connector)
    with pytest.raises(ConnectorError) as info:
        app.open()
    assert secret not in str(info.value)
    assert secret not in repr(connector)
    assert info.value.__cause__ is not None
