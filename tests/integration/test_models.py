"""`procq_sqla.models` describes exactly what the migrations create, and the Alembic
helpers keep autogenerate away from procq's objects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from procq_sqla import models
from procq_sqla.contrib import alembic as procq_alembic
from procq_sqla.database import sqlalchemy_url


@pytest.fixture
def connection(db_url: str) -> Iterator[sa.Connection]:
    engine = sa.create_engine(sqlalchemy_url(db_url, "psycopg"))
    with engine.connect() as conn:
        yield conn
    engine.dispose()


def diffs(connection: sa.Connection, metadata: sa.MetaData, **opts: Any) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True, **opts})
    return list(compare_metadata(context, metadata))


def test_models_match_the_migrated_database(connection: sa.Connection) -> None:
    found = diffs(connection, models.metadata, include_name=_not_version_table)
    assert found == []


def _not_version_table(name: str | None, type_: str, parent_names: Any) -> bool:
    return not (type_ == "table" and name == "procq_alembic_version")


def test_models_cover_every_procq_table(connection: sa.Connection) -> None:
    tables = set(sa.inspect(connection).get_table_names())
    assert {t for t in tables if t != "procq_alembic_version"} == set(models.TABLE_NAMES)
    assert {"procq_jobs", "procq_workers", "procq_periodic_defers"} <= models.TABLE_NAMES


def test_a_changed_model_is_noticed(connection: sa.Connection) -> None:
    """The comparison above can fail: one extra column is reported."""
    changed = sa.MetaData()
    for table in models.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["procq_jobs"].append_column(sa.Column("extra", sa.Text()))
    found = diffs(connection, changed, include_name=_not_version_table)
    assert [(d[0], d[2], d[3].name) for d in found] == [("add_column", "procq_jobs", "extra")]


def test_without_the_helper_autogenerate_would_drop_procq_tables(
    connection: sa.Connection,
) -> None:
    app_metadata = sa.MetaData()  # an application that knows nothing of procq
    dropped = {d[1].name for d in diffs(connection, app_metadata) if d[0] == "remove_table"}
    assert {"procq_jobs", "procq_workers", "procq_periodic_defers"} <= dropped


@pytest.mark.parametrize("hook", ["include_name", "include_object"])
def test_helper_hides_every_procq_object_from_autogenerate(
    connection: sa.Connection, hook: str
) -> None:
    app_metadata = sa.MetaData()
    sa.Table("orders", app_metadata, sa.Column("id", sa.Integer, primary_key=True))
    found = diffs(connection, app_metadata, **{hook: getattr(procq_alembic, hook)})
    # only the application's own new table is proposed; nothing of procq's
    assert [(d[0], d[1].name) for d in found] == [("add_table", "orders")]


def test_combined_hook_applies_the_applications_own_rule(connection: sa.Connection) -> None:
    connection.execute(sa.text("CREATE TABLE legacy_stuff (id int)"))
    hook = procq_alembic.excluding_procq(lambda name, type_, parents: name != "legacy_stuff")
    assert diffs(connection, sa.MetaData(), include_name=hook) == []
    connection.rollback()


def test_version_locations_lists_the_applications_folder_then_procqs() -> None:
    value = procq_alembic.version_locations("/app/migrations/versions")
    own, procq = value.split(" ")
    assert own == "/app/migrations/versions"
    assert procq.endswith("versions")
    assert procq_alembic.is_procq_name("procq_jobs_fetch_idx")
    assert not procq_alembic.is_procq_name("orders")
