"""SQLAlchemy `Table` objects describing procq_sqla's tables as the migrations leave them.

They are for reading (queries in the application, admin views) and for Alembic's
autogenerate: a test checks that `compare_metadata` finds no difference between these
tables and a migrated database. The schema itself is only ever changed by migrations.
`status` is the domain `procq_job_status` (text restricted to `STATUSES`, since
procq_0003): it compares with plain strings like any text column.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

TZ = sa.TIMESTAMP(timezone=True)
STATUSES = ("todo", "doing", "succeeded", "failed", "cancelled", "aborted")
FINISHED_STATUSES = ("succeeded", "failed", "cancelled", "aborted")


class JobStatusDomain(postgresql.DOMAIN):
    """A PostgreSQL domain over text that SQLAlchemy compares like text.

    SQLAlchemy 2.1 warns when a type declares no operator classes and the column is used
    in `==`, `in_()`..., which `postgresql.DOMAIN` does not declare; 2.0 has no such
    attribute."""

    if hasattr(sa.Text, "operator_classes"):
        operator_classes = sa.Text.operator_classes


job_status = JobStatusDomain(
    "procq_job_status",
    sa.Text(),
    constraint_name="procq_job_status_check",
    check=sa.text("VALUE IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")"),
)

jobs = sa.Table(
    "procq_jobs",
    metadata,
    sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
    sa.Column("queue", sa.Text(), nullable=False, server_default="default"),
    sa.Column("task_name", sa.Text(), nullable=False),
    sa.Column("args", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("status", job_status, nullable=False, server_default="todo"),
    sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("lock", sa.Text(), nullable=True),
    sa.Column("queueing_lock", sa.Text(), nullable=True),
    sa.Column("scheduled_at", TZ, nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("started_at", TZ, nullable=True),
    sa.Column("finished_at", TZ, nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("worker_id", sa.BigInteger(), nullable=True),
    sa.Column("abort_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Index(
        "procq_jobs_fetch_idx",
        sa.text("priority DESC"),
        "id",
        postgresql_where=sa.text("status = 'todo'"),
    ),
    sa.Index(
        "procq_jobs_fetch_queue_idx",
        "queue",
        sa.text("priority DESC"),
        "id",
        postgresql_where=sa.text("status = 'todo'"),
    ),
    sa.Index(
        "procq_jobs_queueing_lock_idx",
        "queueing_lock",
        unique=True,
        postgresql_where=sa.text("queueing_lock IS NOT NULL AND status = 'todo'"),
    ),
    sa.Index(
        "procq_jobs_lock_doing_idx",
        "lock",
        unique=True,
        postgresql_where=sa.text("lock IS NOT NULL AND status = 'doing'"),
    ),
    sa.Index(
        "procq_jobs_lock_todo_idx",
        "lock",
        sa.text("priority DESC"),
        "id",
        postgresql_where=sa.text("status = 'todo' AND lock IS NOT NULL"),
    ),
    sa.Index(
        "procq_jobs_doing_worker_idx",
        "worker_id",
        postgresql_where=sa.text("status = 'doing'"),
    ),
    sa.Index(
        "procq_jobs_finished_idx",
        "finished_at",
        postgresql_where=sa.text("status IN ('succeeded', 'failed', 'cancelled', 'aborted')"),
    ),
)

workers = sa.Table(
    "procq_workers",
    metadata,
    sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("hostname", sa.Text(), nullable=True),
    sa.Column("pid", sa.Integer(), nullable=True),
    sa.Column("queues", postgresql.ARRAY(sa.Text()), nullable=True),
    sa.Column("concurrency", sa.Integer(), nullable=False, server_default="1"),
    sa.Column("started_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("last_heartbeat", TZ, nullable=False, server_default=sa.func.now()),
)

periodic_defers = sa.Table(
    "procq_periodic_defers",
    metadata,
    sa.Column("task_name", sa.Text(), nullable=False),
    sa.Column("periodic_id", sa.Text(), nullable=False, server_default=""),
    sa.Column("defer_timestamp", sa.BigInteger(), nullable=False),
    sa.Column("job_id", sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint("task_name", "periodic_id", "defer_timestamp"),
)

TABLE_NAMES = frozenset(t.name for t in metadata.sorted_tables)
