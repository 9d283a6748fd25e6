"""procq_0003: a job's status is the domain `procq_job_status` instead of a table CHECK
constraint; rows, defaults, partial indexes and every way of querying status keep working,
and its downgrade brings procq_0002's CHECK constraint and text column back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from psycopg import sql

from procq_sqla import migrations, models
from procq_sqla.connectors.base import translate_error
from procq_sqla.database import sqlalchemy_url
from procq_sqla.exceptions import ConnectorError
from procq_sqla.sql import queries

STATUSES = models.STATUSES


def column_shape(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
    """(data_type, domain_name, is_nullable, column_default) of procq_jobs.status."""
    return conn.execute(
        "SELECT data_type, domain_name, is_nullable, column_default"
        " FROM information_schema.columns"
        " WHERE table_name = 'procq_jobs' AND column_name = 'status'"
    ).fetchone()


def constraints(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Every CHECK constraint on procq_jobs or on a domain of the public schema, by name."""
    return {
        r[0]: r[1]
        for r in conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE contype = 'c' AND connamespace = 'public'::regnamespace"
            " AND (conrelid = 'procq_jobs'::regclass OR contypid <> 0)"
        )
    }


def index_predicates(conn: psycopg.Connection[Any]) -> dict[str, str | None]:
    return {
        r[0]: r[1]
        for r in conn.execute(
            "SELECT indexrelid::regclass::text, pg_get_expr(indpred, indrelid) FROM pg_index"
            " WHERE indrelid = 'procq_jobs'::regclass"
        )
    }


def rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT id, status, task_name FROM procq_jobs ORDER BY id").fetchall()


def insert_one_of_each(conn: psycopg.Connection[Any]) -> None:
    for status in STATUSES:
        conn.execute(
            "INSERT INTO procq_jobs (task_name, status) VALUES (%s, %s)", (f"t_{status}", status)
        )


def bad_insert(conn: psycopg.Connection[Any]) -> psycopg.errors.CheckViolation:
    with pytest.raises(psycopg.errors.CheckViolation) as caught:
        conn.execute("INSERT INTO procq_jobs (task_name, status) VALUES ('t', 'finished')")
    return caught.value


def test_head_checks_status_with_a_domain_and_no_table_check(empty_db_url: str) -> None:
    migrations.upgrade(sqlalchemy_url(empty_db_url))
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        assert column_shape(conn) == ("text", "procq_job_status", "NO", "'todo'::text")
        assert constraints(conn) == {
            "procq_job_status_check": "CHECK ((VALUE = ANY (ARRAY['todo'::text, 'doing'::text,"
            " 'succeeded'::text, 'failed'::text, 'cancelled'::text, 'aborted'::text])))"
        }
        job_id, status = conn.execute(
            "INSERT INTO procq_jobs (task_name) VALUES ('t') RETURNING id, status"
        ).fetchone() or (None, None)
        assert status == "todo"  # the column default still applies
        with pytest.raises(psycopg.errors.NotNullViolation):
            conn.execute("UPDATE procq_jobs SET status = NULL WHERE id = %s", (job_id,))


def test_a_bad_status_is_refused_by_the_domain_and_translated(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        error = bad_insert(conn)
        conn.execute("INSERT INTO procq_jobs (task_name) VALUES ('t')")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE procq_jobs SET status = 'done'")
        assert [r[1:] for r in rows(conn)] == [("todo", "t")]
    assert error.sqlstate == "23514"
    assert error.diag.constraint_name == "procq_job_status_check"
    assert error.diag.datatype_name == "procq_job_status"
    translated = translate_error(
        error, sqlstate=error.sqlstate, constraint=error.diag.constraint_name
    )
    assert type(translated) is ConnectorError
    assert translated.sqlstate == "23514"
    assert 'domain procq_job_status violates check constraint "procq_job_status_check"' in str(
        translated
    )


def test_partial_indexes_keep_predicates_the_claim_queries_use(db_url: str) -> None:
    todo = "((status)::text = 'todo'::text)"
    doing = "((status)::text = 'doing'::text)"
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert index_predicates(conn) == {
            "procq_jobs_pkey": None,
            "procq_jobs_fetch_idx": todo,
            "procq_jobs_fetch_queue_idx": todo,
            "procq_jobs_queueing_lock_idx": f"((queueing_lock IS NOT NULL) AND {todo})",
            "procq_jobs_lock_doing_idx": f"((lock IS NOT NULL) AND {doing})",
            "procq_jobs_lock_todo_idx": f"({todo} AND (lock IS NOT NULL))",
            "procq_jobs_doing_worker_idx": doing,
            "procq_jobs_finished_idx": "((status)::text = ANY (ARRAY['succeeded'::text,"
            " 'failed'::text, 'cancelled'::text, 'aborted'::text]))",
        }
        conn.execute(
            "INSERT INTO procq_jobs (queue, task_name, priority, status)"
            " SELECT 'q' || (i % 4), 't', i % 5,"
            " CASE WHEN i % 20 = 0 THEN 'todo' ELSE 'succeeded' END"
            " FROM generate_series(1, 8000) AS i"
        )
        conn.execute("ANALYZE procq_jobs")
        any_queue = " ".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT id FROM procq_jobs WHERE status = 'todo'"
                " ORDER BY priority DESC, id LIMIT 10"
            )
        )
        in_queue = " ".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT id FROM procq_jobs WHERE status = 'todo' AND queue = 'q1'"
                " ORDER BY priority DESC, id LIMIT 10"
            )
        )
        claim = " ".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN " + queries["claim_jobs_any_queue"],
                {"limit": 10, "start": 10, "worker_id": None},
            )
        )
    assert "procq_jobs_fetch_idx" in any_queue
    assert "procq_jobs_fetch_queue_idx" in in_queue
    assert "procq_jobs_fetch_idx" in claim


def table_file(conn: psycopg.Connection[Any]) -> Any:
    return conn.execute("SELECT pg_relation_filenode('procq_jobs')").fetchone()


def test_upgrade_keeps_existing_rows_without_rewriting_the_table(empty_db_url: str) -> None:
    url = sqlalchemy_url(empty_db_url)
    migrations.upgrade(url, "procq_0002")
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        insert_one_of_each(conn)
        before, file_before = rows(conn), table_file(conn)
    migrations.upgrade(url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        assert rows(conn) == before
        assert table_file(conn) == file_before  # constraint added after the type change
        assert [r[1] for r in before] == list(STATUSES)
        assert conn.execute(
            "SELECT count(*) FROM procq_jobs WHERE status = ANY(%s::text[])", (["todo", "doing"],)
        ).fetchone() == (2,)


def test_downgrade_restores_the_check_constraint_and_text_column(empty_db_url: str) -> None:
    url = sqlalchemy_url(empty_db_url)
    migrations.upgrade(url, "procq_0002")
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        at_0002 = (column_shape(conn), constraints(conn), index_predicates(conn))
    assert at_0002[1] == {
        "procq_jobs_status_check": "CHECK ((status = ANY (ARRAY['todo'::text, 'doing'::text,"
        " 'succeeded'::text, 'failed'::text, 'cancelled'::text, 'aborted'::text])))"
    }
    migrations.upgrade(url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        insert_one_of_each(conn)
        before = rows(conn)
    migrations.downgrade(url, "procq_0002")
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        assert (column_shape(conn), constraints(conn), index_predicates(conn)) == at_0002
        assert conn.execute("SELECT to_regtype('procq_job_status')").fetchone() == (None,)
        assert rows(conn) == before
        assert bad_insert(conn).diag.constraint_name == "procq_jobs_status_check"


@pytest.fixture(params=["psycopg", "psycopg2"])
def engine(request: pytest.FixtureRequest, db_url: str) -> Iterator[sa.Engine]:
    created = sa.create_engine(sqlalchemy_url(db_url, request.param))
    yield created
    created.dispose()


def test_model_queries_on_status_work_on_both_drivers(engine: sa.Engine) -> None:
    jobs = models.jobs
    with engine.begin() as conn:
        conn.execute(
            jobs.insert(), [{"task_name": f"t_{s}", "status": s} for s in ("todo", "doing")]
        )
        conn.execute(jobs.insert().values(task_name="t_default"))
        todo = conn.execute(
            sa.select(jobs.c.task_name).where(jobs.c.status == "todo").order_by(jobs.c.id)
        ).all()
        some = conn.execute(
            sa.select(jobs.c.task_name, jobs.c.status)
            .where(jobs.c.status.in_(["doing", "failed"]))
            .order_by(jobs.c.id)
        ).all()
        conn.execute(jobs.update().where(jobs.c.status == "doing").values(status="failed"))
        failed = conn.execute(
            sa.select(sa.func.count()).where(jobs.c.status != "todo")
        ).scalar_one()
        with (
            pytest.raises(sa.exc.IntegrityError, match="procq_job_status_check"),
            conn.begin_nested(),
        ):
            conn.execute(jobs.insert().values(task_name="t", status="finished"))
    assert [r.task_name for r in todo] == ["t_todo", "t_default"]
    assert [tuple(r) for r in some] == [("t_doing", "doing")]
    assert failed == 1


def test_models_match_head_and_report_a_status_type_change(engine: sa.Engine) -> None:
    """The model's domain is what autogenerate sees; a plain Text status would differ."""
    changed = sa.MetaData()
    for table in models.metadata.sorted_tables:
        table.to_metadata(changed)
    status = changed.tables["procq_jobs"].c.status
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_name": lambda name, kind, _: name != "procq_alembic_version",
            },
        )
        assert compare_metadata(context, models.metadata) == []
        status.type = sa.Text()
        found = compare_metadata(context, changed)
    assert [(d[0][0], d[0][3]) for d in found] == [("modify_type", "status")]


def test_create_all_from_the_models_builds_the_domain(empty_db_url: str) -> None:
    engine = sa.create_engine(sqlalchemy_url(empty_db_url))
    try:
        models.metadata.create_all(engine)
        with psycopg.connect(empty_db_url, autocommit=True) as conn:
            assert column_shape(conn) == ("text", "procq_job_status", "NO", "'todo'::text")
            assert set(constraints(conn)) == {"procq_job_status_check"}
            assert bad_insert(conn).diag.constraint_name == "procq_job_status_check"
        models.metadata.drop_all(engine)
        with psycopg.connect(empty_db_url, autocommit=True) as conn:
            assert conn.execute("SELECT to_regtype('procq_job_status')").fetchone() == (None,)
    finally:
        engine.dispose()


def test_a_role_without_usage_on_the_domain_still_writes_statuses(
    db_url: str, server_url: str
) -> None:
    """USAGE on a type guards creating objects that use it, never reading or writing
    rows: the worker and web GRANTs need nothing for the domain, even if PUBLIC loses it."""
    role = f"nodomain_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        try:
            owner.execute("REVOKE USAGE ON TYPE procq_job_status FROM PUBLIC")
            owner.execute(
                sql.SQL("GRANT SELECT, INSERT, UPDATE ON procq_jobs TO {}").format(
                    sql.Identifier(role)
                )
            )
            with psycopg.connect(db_url, user=role, autocommit=True) as conn:
                assert conn.execute(
                    "SELECT has_type_privilege('procq_job_status', 'USAGE')"
                ).fetchone() == (False,)
                conn.execute("INSERT INTO procq_jobs (task_name) VALUES ('t')")
                conn.execute("UPDATE procq_jobs SET status = 'doing' WHERE status = 'todo'")
                assert conn.execute("SELECT status FROM procq_jobs").fetchall() == [("doing",)]
                with pytest.raises(psycopg.errors.CheckViolation):
                    conn.execute("UPDATE procq_jobs SET status = 'done'")
        finally:
            owner.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            with psycopg.connect(server_url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_upgrade_sql_includes_the_domain_migration() -> None:
    ddl = migrations.upgrade_sql(start="procq_0002")
    assert "ALTER TABLE procq_jobs DROP CONSTRAINT procq_jobs_status_check" in ddl
    assert "CREATE DOMAIN procq_job_status AS text" in ddl
    assert "ALTER TABLE procq_jobs ALTER COLUMN status TYPE procq_job_status" in ddl
    assert "ADD CONSTRAINT procq_job_status_check CHECK (VALUE IN ('todo'" in ddl
    assert "UPDATE procq_alembic_version SET version_num='procq_0003'" in ddl
