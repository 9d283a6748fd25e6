"""A small app for the CLI acceptance tests, built from PROCQ_DATABASE_URL at import.

Run as `procq --app cli_app:app ...` with this folder on PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import os
import time

from procq_sqla import App, JobContext, PsycopgConnector
from procq_sqla.exceptions import JobAborted

app = App(connector=PsycopgConnector(conninfo=os.environ["PROCQ_DATABASE_URL"]))


@app.task(name="add")
def add(a: int, b: int) -> int:
    return a + b


@app.task(name="sleep", queue="slow")
async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


@app.task(name="fail")
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@app.task(name="always_fails", retry=2)
def always_fails() -> None:
    raise ValueError("flaky failure")


@app.task(name="wait_for_abort", pass_context=True)
def wait_for_abort(context: JobContext, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if context.should_abort():
            raise JobAborted("stopped on request")
        time.sleep(0.02)


@app.task(name="send_email", queue="emails", queueing_lock="mail")
def send_email(to: str) -> None:
    pass


not_an_app = 42
