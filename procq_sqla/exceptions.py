"""One exception tree for procq_sqla, rooted at `ProcqError`.

Each class's docstring is its default message. Driver errors are wrapped in exactly one
place per connector and kept as `__cause__`, so callers catch procq_sqla's classes and
can still reach the psycopg/psycopg2 error when they need it.
"""

from __future__ import annotations


class ProcqError(Exception):
    """An error from procq_sqla."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or " ".join((self.__doc__ or "").split()))


class ConnectorError(ProcqError):
    """The database could not be reached or refused the operation."""

    def __init__(self, message: str | None = None, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class SchemaMissing(ConnectorError):
    """The procq_sqla tables are missing in this database: run `alembic upgrade head` or
    `procq migrate`."""


class AlreadyEnqueued(ProcqError):
    """A job with the same queueing lock is already waiting."""

    def __init__(self, message: str | None = None, *, queueing_lock: str | None = None) -> None:
        super().__init__(message)
        self.queueing_lock = queueing_lock


class AppNotOpen(ProcqError):
    """The app is not open: call `app.open()` (or `await app.open_async()`) first."""


class WrongConnector(ProcqError, TypeError):
    """This connector cannot do that; see the message for the one to use."""


class JobArgumentsError(ProcqError, ValueError):
    """The job's arguments cannot be stored as JSON."""


class InvalidOption(ProcqError, ValueError):
    """A job or task option has an invalid value."""


class UnknownTask(ProcqError, LookupError):
    """No task is registered under that name."""


class JobNotFound(ProcqError, LookupError):
    """No job has that id."""


class TaskTimeout(ProcqError):
    """The task ran longer than its timeout."""


class JobAborted(ProcqError):
    """The job was aborted while it ran."""
