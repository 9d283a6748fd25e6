"""Glue between procq_sqla and Alembic, which alone owns the schema.

The revisions live in the top-level `alembic/` folder of the source tree and are shipped
inside the wheel as `procq_sqla/_alembic` (never as a top-level `alembic` package, which
would shadow Alembic itself). `upgrade()` runs them from code; `procq migrate` and
`alembic upgrade head` run the very same revisions.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, pool

from alembic import command

from .database import database_url, sqlalchemy_url

VERSION_TABLE = "procq_alembic_version"
BRANCH = "procq"


def script_location() -> Path:
    """The folder holding env.py and versions/: in the wheel, or in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_alembic", here.parent / "alembic"):
        if (candidate / "versions").is_dir():
            return candidate
    raise FileNotFoundError("procq_sqla's migrations are missing from this installation")


def versions_location() -> str:
    """The revisions folder, for a user's `version_locations` (see the README)."""
    return str(script_location() / "versions")


def resolve_sqlalchemy_url(configured: str | None = None) -> str:
    """`sqlalchemy.url` if set, else PROCQ_DATABASE_URL / PG* / embedded, on psycopg 3."""
    if configured:
        return configured
    return sqlalchemy_url(database_url())


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.set_main_option("version_locations", versions_location())
    cfg.set_main_option("path_separator", "os")
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def _connection(target: Engine | Connection | str | None) -> Iterator[Connection]:
    if isinstance(target, Connection):
        yield target
        return
    owned = not isinstance(target, Engine)
    if isinstance(target, Engine):
        engine = target
    else:
        engine = create_engine(resolve_sqlalchemy_url(target), poolclass=pool.NullPool)
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        if owned:
            engine.dispose()


def upgrade(target: Engine | Connection | str | None = None, revision: str = "head") -> None:
    """Bring procq_sqla's schema to `revision` (default: head) on an engine, a connection
    or a URL (None: PROCQ_DATABASE_URL, PG* variables, or the embedded server)."""
    with _connection(target) as connection:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def downgrade(target: Engine | Connection | str | None = None, revision: str = "base") -> None:
    """Undo procq_sqla's revisions down to `revision` (default: remove everything)."""
    with _connection(target) as connection:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, revision)


def upgrade_sql(revision: str = "head", start: str | None = None) -> str:
    """The DDL an upgrade would run, for DBAs who apply it themselves."""
    cfg = alembic_config("postgresql+psycopg://")
    buffer = io.StringIO()
    cfg.output_buffer = buffer
    with redirect_stdout(buffer):
        command.upgrade(cfg, f"{start}:{revision}" if start else revision, sql=True)
    return buffer.getvalue()


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def missing_revisions(connection: Connection) -> list[str]:
    """Revisions between the database's version and head (empty when up to date)."""
    script = ScriptDirectory.from_config(alembic_config())
    current = current_revision(connection)
    return [
        rev.revision
        for rev in script.iterate_revisions("head", current or "base")
        if rev.revision != current
    ]
