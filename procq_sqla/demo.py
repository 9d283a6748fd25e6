"""`procq demo`: the tour a newcomer runs first, on a database that appears by itself.

It migrates the schema with Alembic, creates a small business table, defers jobs inside
a SQLAlchemy `Session` together with the business rows (and shows that a rolled-back
session leaves no job behind), runs a worker until the queue is empty, and prints every
job with its status, attempts and timings. One task fails once and is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Integer, String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from . import migrations
from .app import App
from .contrib.sqlalchemy import SQLAlchemyPsycopg2Connector
from .database import database_url as resolve_database_url
from .database import mask_password, normalize_url, sqlalchemy_url
from .jobs import JobContext
from .sql import queries


class Base(DeclarativeBase):
    pass


class Order(Base):
    """The demo's business row: jobs are deferred in the same transaction."""

    __tablename__ = "demo_orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer: Mapped[str] = mapped_column(String(100))
    total_cents: Mapped[int] = mapped_column(Integer)


def build_app() -> App:
    # defers borrow the application's engine; the worker runs on the paired
    # PsycopgConnector derived from that same engine: the database is configured once
    app = App(connector=SQLAlchemyPsycopg2Connector())

    @app.task(name="send_confirmation", queue="emails")
    async def send_confirmation(order_id: int, customer: str) -> None:
        await asyncio.sleep(0.01)  # pretend to talk to a mail server

    @app.task(name="render_invoice", queue="default")
    def render_invoice(order_id: int, total_cents: int) -> str:
        time.sleep(0.005)  # pretend to render a PDF (runs in a thread)
        return f"invoice-{order_id}.pdf"

    @app.task(name="sync_to_crm", queue="default", retry=2, pass_context=True)
    async def sync_to_crm(context: JobContext, order_id: int) -> None:
        if context.job.attempts == 1:
            raise ConnectionError("CRM did not answer (simulated)")

    return app


class _Progress(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", "")
        if not event.startswith("job_"):
            return
        style = {"job_succeeded": "green", "job_retried": "yellow"}.get(event, "red")
        self.console.print(f"  [{style}]{record.getMessage()}[/{style}]")


def _ms(start: Any, end: Any) -> str:
    if start is None or end is None:
        return "-"
    return f"{(end - start).total_seconds() * 1000:.1f}"


def _defer_orders(app: App, engine: Any, console: Console) -> None:
    tasks = app.tasks
    orders = [("ada", 4200), ("grace", 1999), ("linus", 750)]
    with Session(engine) as session, session.begin():
        for customer, total in orders:
            order = Order(customer=customer, total_cents=total)
            session.add(order)
            session.flush()  # assigns order.id inside the transaction
            tasks["send_confirmation"].configure(session=session).defer(
                order_id=order.id, customer=customer
            )
            tasks["render_invoice"].configure(session=session).defer(
                order_id=order.id, total_cents=total
            )
        tasks["sync_to_crm"].configure(session=session).defer(order_id=1)
    console.print(
        f"Committed {len(orders)} orders and {2 * len(orders) + 1} jobs in ONE transaction."
    )

    with Session(engine) as session:
        session.add(Order(customer="mallory", total_cents=1))
        session.flush()
        tasks["send_confirmation"].configure(session=session).defer(
            order_id=999, customer="mallory"
        )
        session.rollback()
    with Session(engine) as session:
        n = session.scalar(
            select(func.count()).select_from(Order).where(Order.customer == "mallory")
        )
    console.print(f"Rolled back an order and its job: {n} order rows, and no job was left behind.")


def _print_jobs(app: App, console: Console) -> int:
    jobs = sorted(app.job_manager.list_jobs(limit=100), key=lambda j: j.id)
    table = Table(title="procq_jobs after the worker drained the queues")
    for column in ("id", "task", "queue", "status", "attempts", "wait ms", "run ms"):
        table.add_column(column, no_wrap=True)
    for job in jobs:
        table.add_row(
            str(job.id),
            job.task_name,
            job.queue,
            job.status,
            str(job.attempts),
            _ms(job.created_at, job.started_at),
            _ms(job.started_at, job.finished_at),
        )
    console.print(table)
    for job in jobs:
        if job.last_error:
            error = job.last_error.strip().splitlines()[-1]
            console.print(
                f"Job {job.id} ({job.task_name}) failed on an earlier attempt with "
                f"[yellow]{error}[/yellow]; it is now {job.status} after {job.attempts} attempts."
            )
    failed = [j for j in jobs if j.status != "succeeded"]
    return 1 if failed or len(jobs) != 7 else 0


def main(database_url: str | None = None) -> int:
    """Run the demo; returns the process exit code (0 when every job succeeded)."""
    console = Console()
    url = normalize_url(database_url) if database_url else resolve_database_url()
    where = mask_password(url) if url else "the server named by the PG* variables"
    console.print(f"[bold]procq_sqla demo[/bold] on {where}")

    engine = create_engine(sqlalchemy_url(url, "psycopg2"), pool_size=5)
    try:
        migrations.upgrade(engine)
        console.print(f"Schema migrated by Alembic to {migrations.head_revision()}.")
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        app = build_app()
        with engine.begin() as conn:
            conn.exec_driver_sql(queries["demo_reset_jobs"])
        with app.open(engine):  # borrow the engine's pool; close() leaves it alone
            console.print(
                "App opened on the application's own SQLAlchemy engine "
                "(SQLAlchemyPsycopg2Connector borrows its pool)."
            )
            _defer_orders(app, engine, console)
            console.print("Running a worker until the queues are empty:")
            handler = _Progress(console)
            worker_logger = logging.getLogger("procq_sqla.worker")
            worker_logger.addHandler(handler)
            worker_logger.setLevel(logging.INFO)
            worker_logger.propagate = False  # the demo shows its own progress lines
            try:
                app.run_worker(concurrency=4, wait=False, install_signal_handlers=False)
            finally:
                worker_logger.removeHandler(handler)
                worker_logger.propagate = True
            return _print_jobs(app, console)
    finally:
        engine.dispose()
