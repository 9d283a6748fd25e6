"""procq_sqla's initial schema: jobs, workers, periodic defers, NOTIFY on insert.

The claim path reads only `status = 'todo'` rows through partial indexes ordered by
priority then id, so a table full of finished jobs costs the claim nothing. Locks are
enforced by a unique partial index (one `doing` job per lock) and queueing locks by
another (one `todo` job per queueing lock). New jobs are announced by one statement-level
trigger (one NOTIFY per queue per statement, never per row), which also covers jobs
inserted through an application's own session: the NOTIFY is delivered at its commit.

Revision ID: procq_0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "procq_0001"
down_revision = None
branch_labels = ("procq",)
depends_on = None

TZ = sa.TIMESTAMP(timezone=True)
FINISHED = "status IN ('succeeded', 'failed', 'cancelled', 'aborted')"


def upgrade() -> None:
    op.create_table(
        "procq_jobs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("queue", sa.Text(), nullable=False, server_default="default"),
        sa.Column("task_name", sa.Text(), nullable=False),
        sa.Column(
            "args", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("status", sa.Text(), nullable=False, server_default="todo"),
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
        sa.CheckConstraint(
            "status IN ('todo', 'doing', 'succeeded', 'failed', 'cancelled', 'aborted')",
            name="procq_jobs_status_check",
        ),
    )
    todo = sa.text("status = 'todo'")
    op.create_index(
        "procq_jobs_fetch_idx",
        "procq_jobs",
        [sa.text("priority DESC"), "id"],
        postgresql_where=todo,
    )
    op.create_index(
        "procq_jobs_fetch_queue_idx",
        "procq_jobs",
        ["queue", sa.text("priority DESC"), "id"],
        postgresql_where=todo,
    )
    op.create_index(
        "procq_jobs_queueing_lock_idx",
        "procq_jobs",
        ["queueing_lock"],
        unique=True,
        postgresql_where=todo,
    )
    op.create_index(
        "procq_jobs_lock_doing_idx",
        "procq_jobs",
        ["lock"],
        unique=True,
        postgresql_where=sa.text("status = 'doing'"),
    )
    op.create_index(
        "procq_jobs_lock_todo_idx",
        "procq_jobs",
        ["lock", sa.text("priority DESC"), "id"],
        postgresql_where=sa.text("status = 'todo' AND lock IS NOT NULL"),
    )
    op.create_index(
        "procq_jobs_doing_worker_idx",
        "procq_jobs",
        ["worker_id"],
        postgresql_where=sa.text("status = 'doing'"),
    )
    op.create_index(
        "procq_jobs_finished_idx",
        "procq_jobs",
        ["finished_at"],
        postgresql_where=sa.text(FINISHED),
    )

    op.create_table(
        "procq_workers",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("queues", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("started_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("last_heartbeat", TZ, nullable=False, server_default=sa.func.now()),
    )

    op.create_table(
        "procq_periodic_defers",
        sa.Column("task_name", sa.Text(), nullable=False),
        sa.Column("periodic_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("defer_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("task_name", "periodic_id", "defer_timestamp"),
    )

    op.execute(
        """
        CREATE FUNCTION procq_notify_new_jobs() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('procq_jobs', q.queue)
            FROM (SELECT DISTINCT queue FROM procq_new_jobs) AS q;
            RETURN NULL;
        END;
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER procq_jobs_notify_insert
        AFTER INSERT ON procq_jobs
        REFERENCING NEW TABLE AS procq_new_jobs
        FOR EACH STATEMENT EXECUTE FUNCTION procq_notify_new_jobs()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS procq_jobs_notify_insert ON procq_jobs")
    op.execute("DROP FUNCTION IF EXISTS procq_notify_new_jobs()")
    op.drop_table("procq_periodic_defers")
    op.drop_table("procq_workers")
    op.drop_table("procq_jobs")
