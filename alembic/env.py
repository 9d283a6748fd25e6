"""Alembic environment for procq_sqla's own schema.

Used by `alembic upgrade head` from a clone and by `procq_sqla.migrations.upgrade()`.
The version is kept in `procq_alembic_version` so that it never collides with the
application's own `alembic_version`. A connection handed over in
`config.attributes["connection"]` is used as is (programmatic upgrades); otherwise the
database comes from `sqlalchemy.url`, then `PROCQ_DATABASE_URL`, then libpq variables.
"""

from __future__ import annotations

from sqlalchemy import Connection, create_engine, pool

from alembic import context
from procq_sqla.migrations import VERSION_TABLE, resolve_sqlalchemy_url

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url") or "postgresql://",
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    url = resolve_sqlalchemy_url(config.get_main_option("sqlalchemy.url"))
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
