"""procq_sqla: a PostgreSQL task queue for SQLAlchemy applications.

Jobs are rows in `procq_jobs`; they are deferred through the application's own engine or
session, and run by a fast asyncio worker on psycopg 3. See the README for the tour.
"""

from __future__ import annotations

from typing import Any

from .app import App
from .connectors.base import AsyncConnector, SyncConnector
from .connectors.psycopg import PsycopgConnector
from .connectors.sync_psycopg import SyncPsycopgConnector
from .exceptions import (
    AlreadyEnqueued,
    AppNotOpen,
    ConnectorError,
    JobArgumentsError,
    ProcqError,
    SchemaMissing,
    UnknownTask,
    WrongConnector,
)
from .jobs import Job, JobContext
from .manager import JobManager
from .retry import RetryStrategy
from .tasks import Task

__version__ = "0.1.0"

_LAZY = {
    "SQLAlchemyPsycopg2Connector": "procq_sqla.contrib.sqlalchemy",
    "SQLAlchemyPsycopgConnector": "procq_sqla.contrib.sqlalchemy",
    "Psycopg2Connector": "procq_sqla.connectors.psycopg2",
    "AiopgConnector": "procq_sqla.connectors.aiopg",
}


def __getattr__(name: str) -> Any:
    """Optional drivers load on first use, so `import procq_sqla` needs only psycopg 3."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'procq_sqla' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "AiopgConnector",
    "AlreadyEnqueued",
    "App",
    "AppNotOpen",
    "AsyncConnector",
    "ConnectorError",
    "Job",
    "JobArgumentsError",
    "JobContext",
    "JobManager",
    "ProcqError",
    "Psycopg2Connector",
    "PsycopgConnector",
    "RetryStrategy",
    "SQLAlchemyPsycopg2Connector",
    "SQLAlchemyPsycopgConnector",
    "SchemaMissing",
    "SyncConnector",
    "SyncPsycopgConnector",
    "Task",
    "UnknownTask",
    "WrongConnector",
    "__version__",
]
