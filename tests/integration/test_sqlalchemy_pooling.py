"""Engine-shared pooling, proven: deferring through `app.open(engine)` never holds more
connections than the engine's pool allows and never opens a connection of its own."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import psycopg2
import pytest
from sqlalchemy import create_engine, event

from procq_sqla import App
from procq_sqla.contrib.sqlalchemy import SQLAlchemyPsycopg2Connector
from procq_sqla.database import sqlalchemy_url

SINGLE_DEFERS = 1000
BATCH = 1000


class ActivitySampler(threading.Thread):
    """Samples pg_stat_activity for one application_name until stopped."""

    def __init__(self, url: str, application_name: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(url, autocommit=True)  # before connect is forbidden
        self.application_name = application_name
        self.most = 0
        self.pids: set[int] = set()
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        with self.conn as conn:
            while not self.done.is_set():
                pids = [
                    row[0]
                    for row in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                        (self.application_name,),
                    )
                ]
                self.pids.update(pids)
                self.most = max(self.most, len(pids))
                self.samples += 1
                self.done.wait(0.002)


def refuse_connect(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a new database connection was opened")


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_defers_stay_within_the_engines_two_connections(
    driver: str, db_url: str, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    application_name = f"procq-pool-{uuid.uuid4().hex[:8]}"
    engine = create_engine(
        sqlalchemy_url(db_url, driver),
        pool_size=2,
        max_overflow=0,
        pool_timeout=30,
        connect_args={"application_name": application_name},
    )
    connects: list[object] = []
    event.listen(engine, "connect", lambda dbapi_conn, record: connects.append(dbapi_conn))
    app = App(connector=SQLAlchemyPsycopg2Connector()).open(engine)

    @app.task(name="t")
    def t(n: int) -> None: ...

    # warm the pool: both connections exist, then any further connect is an error
    first, second = engine.connect(), engine.connect()
    first.close()
    second.close()
    assert len(connects) == 2
    sampler = ActivitySampler(db_url, application_name)
    monkeypatch.setattr(engine.dialect.loaded_dbapi, "connect", refuse_connect)
    monkeypatch.setattr(psycopg2, "connect", refuse_connect)
    monkeypatch.setattr(psycopg, "connect", refuse_connect)
    monkeypatch.setattr(psycopg.Connection, "connect", refuse_connect)

    sampler.start()
    try:
        with ThreadPoolExecutor(4) as pool:  # more callers than connections
            ids = list(pool.map(lambda n: t.defer(n=n), range(SINGLE_DEFERS)))
        batch_ids = t.batch_defer(*({"n": n} for n in range(BATCH)))
    finally:
        sampler.done.set()
        sampler.join(10)
    app.close()

    assert len(set(ids)) == SINGLE_DEFERS and len(batch_ids) == BATCH
    count = db.execute("SELECT count(*) AS n FROM procq_jobs").fetchone()["n"]
    assert count == SINGLE_DEFERS + BATCH
    assert sampler.samples > 10
    assert 1 <= sampler.most <= 2  # the sampler saw our backends, never more than two
    assert len(sampler.pids) <= 2  # the same two backends the whole time
    assert len(connects) == 2  # the pool never had to connect again
    assert engine.pool.checkedout() == 0
    engine.dispose()
