"""Connectors: how procq_sqla talks to PostgreSQL, one module per driver.

Optional drivers are imported lazily so that `import procq_sqla` needs only psycopg 3.
"""

from __future__ import annotations

from .base import AsyncConnector, SyncConnector
from .psycopg import PsycopgConnector
from .sync_psycopg import SyncPsycopgConnector

__all__ = ["AsyncConnector", "PsycopgConnector", "SyncConnector", "SyncPsycopgConnector"]
