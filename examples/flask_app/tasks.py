"""The procq_sqla app and its task, importable without Flask by the worker process.

The web process opens this app on Flask-SQLAlchemy's engine (`procq.open(db.engine)`),
so deferring borrows the web app's own connections. The worker process
(`procq --app examples.flask_app.tasks.app worker`) never opens it: it derives its
psycopg 3 connection from the same `DATABASE_URL`.
"""

from __future__ import annotations

import functools
import logging
import os

from sqlalchemy import Engine, create_engine, update

from procq_sqla import App
from procq_sqla.contrib.sqlalchemy import SQLAlchemyPsycopg2Connector
from procq_sqla.database import sqlalchemy_url

from .models import Order

logger = logging.getLogger(__name__)


def database_url() -> str:
    """`DATABASE_URL`, else `PROCQ_DATABASE_URL`, else "" (libpq's PG* variables)."""
    return os.environ.get("DATABASE_URL") or os.environ.get("PROCQ_DATABASE_URL", "")


app = App(connector=SQLAlchemyPsycopg2Connector(dsn=database_url()))


@functools.cache
def worker_engine() -> Engine:
    """The engine tasks use in the worker process (the web process uses db.engine)."""
    return create_engine(sqlalchemy_url(database_url(), "psycopg2"), pool_size=2)


@app.task(queue="shipping", retry=3, name="ship_order")
def ship_order(order_id: int) -> None:
    """Pretend to hand the parcel to the carrier, then mark the order shipped."""
    with worker_engine().begin() as conn:
        conn.execute(update(Order).where(Order.id == order_id).values(status="shipped"))
    logger.info("order %s shipped", order_id)
