"""Helpers for the worker acceptance tests: start real worker processes, read their logs,
wait on the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from procq_sqla import App, SyncPsycopgConnector

HERE = Path(__file__).parent

EFFECTS_DDL = """
CREATE TABLE effects (
    id bigserial PRIMARY KEY,
    job_id bigint NOT NULL,
    n bigint NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
)
"""


DEFAULT_OPTIONS = {
    "--fetch-job-polling-interval": "0.5",
    "--abort-job-polling-interval": "0.5",
    "--heartbeat-interval": "0.5",
    "--stalled-worker-timeout": "2",
}


def worker_command(*args: str) -> list[str]:
    """`procq --app worker_semantics_app:app worker` with short test timings by default."""
    options = [item for k, v in DEFAULT_OPTIONS.items() if k not in args for item in (k, v)]
    return [
        sys.executable,
        "-m",
        "procq_sqla",
        "--app",
        "worker_semantics_app:app",
        "worker",
        *options,
        *args,
    ]


class WorkerProcess:
    """One `procq worker` subprocess with its combined output kept in a file."""

    def __init__(self, db_url: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.log = Path(tempfile.mkstemp(prefix="procq-worker-", suffix=".log")[1])
        self._final: str | None = None
        environment = {**os.environ, "PROCQ_DATABASE_URL": db_url, **(env or {})}
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE), environment.get("PYTHONPATH", "")) if p
        )
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                worker_command(*args),
                cwd=HERE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environment,
            )

    @property
    def output(self) -> str:
        if self._final is not None:
            return self._final
        return self.log.read_text(errors="replace")

    def discard_log(self) -> None:
        """Keep the output in memory and remove the file (once the process is gone)."""
        self._final = self.output
        self.log.unlink(missing_ok=True)

    def wait_started(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while "started (id" not in self.output:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{self.output}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"worker did not stop on SIGTERM:\n{self.output}") from None


@contextmanager
def workers(db_url: str, count: int, *args: str, **kwargs: Any) -> Iterator[list[WorkerProcess]]:
    started = [WorkerProcess(db_url, *args, **kwargs) for _ in range(count)]
    try:
        for worker in started:
            worker.wait_started()
        yield started
    finally:
        for worker in started:
            worker.signal(signal.SIGTERM)
        for worker in started:
            try:
                worker.proc.wait(20)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
        for worker in started:
            worker.discard_log()


def error_lines(output: str) -> list[str]:
    """Log lines at ERROR or worse, and tracebacks."""
    return [
        line
        for line in output.splitlines()
        if " ERROR " in line or " CRITICAL " in line or "Traceback" in line
    ]


def wait_for(
    db: psycopg.Connection[Any], query: str, expected: Any, timeout: float = 20.0, **params: Any
) -> Any:
    """Poll a one-value query until it returns `expected` (or time runs out); returns it."""
    deadline = time.monotonic() + timeout
    while True:
        row = db.execute(query, params).fetchone()
        value = next(iter(row.values())) if row else None
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


TASK_NAMES = ("record", "record_retry", "record_sync", "tick")


def make_app(db_url: str) -> App:
    """A deferring app with the task names of the worker app (the bodies run there)."""
    app = App(connector=SyncPsycopgConnector(conninfo=db_url))
    for name in TASK_NAMES:
        app.task(name=name)(_remote)
    return app


def _remote(**kwargs: Any) -> None:
    raise AssertionError("this task runs in the worker process")
